"""One chaos run: the local stack, reach-sync routers and syncers in one group, the shop's load,
a seeded schedule of faults; then the faults stop and independent checks judge the outcome.

1. start the stack (the durable broker with ``plan.durable_broker``) and the per-row commit-order
   log;
2. start the fleet and wait until the sandbox equals the seeded shop (Debezium's snapshot);
3. run the load until the row log counts ``plan.changes`` source changes, while the schedule's
   faults run, each in a worker thread, and crashed members are started again (and counted);
4. stop every fault, wait until the sandbox equals the database (the convergence time is
   measured from the end of the last fault);
5. check, from outside reach-sync: every entity equals the projection, deleted entities are
   absent, no version went backward, every applied state was audited, no offset was committed
   before its outcome (the syncer group's commits are watched through steps 3 and 4), every
   malformed input was dead-lettered with its reason and without holding its partition, no
   secret or unmapped PII in any log, span or audit record.

The checks read the database, the sandbox's history, the audit, dirty and dead-letter topics,
the group's committed offsets and the processes' logs; none asks reach-sync what it did.
Everything stops with the run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psycopg
from confluent_kafka import Producer

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from reach_devstack.chaos import checks, commits, malformed, topics
from reach_devstack.chaos.faults import FaultLog, Injector
from reach_devstack.chaos.fleet import Fleet
from reach_devstack.chaos.plan import KIND_DESCRIPTIONS, ChaosPlan, Fault, schedule
from reach_devstack.demo import DEFINITION, demo_env
from reach_devstack.load import run_load
from reach_devstack.stack import DEV_TENANTS, LocalStack, StackEndpoints, StackOptions
from reach_devstack.verify import Difference, verify_sandbox

__all__ = ["ChaosResult", "run_chaos"]

REPO = Path(__file__).parents[3]
# The load runs in slices of this length, between which the run counts the source changes.
LOAD_SLICE_S = 10.0
# How often the run looks for crashed members, and how often it compares while settling.
WATCH_S = 0.5
SETTLE_POLL_S = 5.0
# A malformed event must be dead-lettered this soon after it was produced: it must not hold its
# partition. The injection happens while the routers' group is steady (faults.py), so a router's
# own rebalance cannot be what delays it.
STALL_BOUND_S = 5.0
# Expected changes per load operation, for the schedule's horizon only (the run stops on the
# row log's count, not on this estimate).
CHANGES_PER_OPERATION = 1.2
GROUP = "chaos"
# How long the run's own reads and writes wait for a database a fault has stopped.
DATABASE_WAIT_S = 60.0


@dataclass
class ChaosResult:
    """What the run did and what the checks found; ``passed`` is the verdict."""

    seed: int
    source_changes: int = 0
    load_seconds: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    faults_skipped: dict[str, int] = field(default_factory=dict)
    kinds_missing: list[str] = field(default_factory=list)
    crashes: int = 0
    converged: bool = False
    converge_seconds: float | None = None
    entities: int = 0
    different: int = 0
    missing: int = 0
    lost_deletes: int = 0
    backward: int = 0
    never_existed: int = 0
    versions_checked: int = 0
    unaudited: int = 0
    # Applied states audited only by their write-ahead record: the process ended first.
    outcome_unknown: int = 0
    # Offsets never committed before the outcome (commits.py): the dirty keys judged at the
    # moment their offset was seen committed, and those Reach did not yet hold.
    commit_moves: int = 0
    keys_judged: int = 0
    early_commits: int = 0
    malformed_kinds: int = 0
    malformed_events: int = 0
    malformed_not_dead_lettered: int = 0
    malformed_wrong_reason: int = 0
    max_stall_seconds: float = 0.0
    stalls_over_bound: int = 0
    bad_rows: int = 0
    bad_rows_not_dead_lettered: int = 0
    leaks: int = 0
    findings: list[str] = field(default_factory=list)
    passed: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class _Injected:
    """The run's own bad input, to be found again in the dead-letter topic (with the wall-clock
    time each event was produced: dead letters carry the router's produce time)."""

    events: list[tuple[malformed.MalformedEvent, float]] = field(default_factory=list)
    rows: list[malformed.BadRow] = field(default_factory=list)
    marker: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)


def run_chaos(plan: ChaosPlan, state_dir: Path, say: Callable[[str], None] = print) -> ChaosResult:
    result = ChaosResult(seed=plan.seed)
    options = StackOptions(
        state_dir=state_dir,
        seed_customers=plan.seed_customers,
        seed_transactions=plan.seed_transactions,
        durable_broker=plan.durable_broker,
    )
    # Every process the run starts after the stack is started on this one thread, which lives
    # until everything has stopped (a child dies with the thread that started it).
    with (
        concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chaos-spawn") as spawner,
        LocalStack(options) as stack,
    ):
        endpoints = stack.endpoints
        assert endpoints is not None

        def spawn(start: Callable[[], None]) -> None:
            spawner.submit(start).result()

        _run(plan, stack, endpoints, state_dir, result, say, spawn)
    return result


def _env(endpoints: StackEndpoints) -> dict[str, str]:
    return {
        **os.environ,
        **demo_env(endpoints, group=GROUP),
        "REACH_SYNC_REDIS_PREFIX": f"reach-sync:{GROUP}",
        "REACH_SYNC_DIRTY_TOPIC": f"{GROUP}.dirty",
        "REACH_SYNC_DEAD_LETTER_TOPIC": f"{GROUP}.dead-letter",
        "REACH_SYNC_AUDIT_TOPIC": f"{GROUP}.audit",
        # Spans go to each process's log (stdout), which the leak check scans.
        "OTEL_TRACES_EXPORTER": "console",
        # Exported every 0.2 s rather than 5: a kill -9 loses what was not exported yet.
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "PYTHONUNBUFFERED": "1",
    }


def _run(
    plan: ChaosPlan,
    stack: LocalStack,
    endpoints: StackEndpoints,
    state_dir: Path,
    result: ChaosResult,
    say: Callable[[str], None],
    spawn: Callable[[Callable[[], None]], None],
) -> None:
    dsn = endpoints.postgres_dsn
    env = _env(endpoints)
    definition = load_definition(DEFINITION, env)
    tenants = [external for _, external in DEV_TENANTS]
    checks.install_row_log(dsn)
    log_dir = state_dir / "logs" / "reach-sync"
    log_dir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet.of(plan.routers, plan.syncers, DEFINITION, env, log_dir, REPO)
    say(f"chaos: seed {plan.seed}, {plan.changes} source changes at {plan.rate:g} operations/s,")
    say(f"chaos: {plan.routers} routers and {plan.syncers} syncers; logs in {log_dir}")
    spawn(fleet.start)
    try:
        started = time.monotonic()
        _settle(definition, endpoints, tenants, set(), plan.settle_timeout_s)
        say(f"chaos: the snapshot is in the sandbox after {time.monotonic() - started:.1f} s")
        log = FaultLog(started_at=time.monotonic())
        injected = _Injected()
        injector = Injector(
            plan,
            stack,
            fleet,
            endpoints.sandbox_url,
            endpoints.sandbox_admin_token,
            endpoints.redis_url,
            log,
            lambda: _inject(injected, endpoints, log),
            spawn,
        )
        with commits.watching(
            endpoints.bootstrap_servers, f"{GROUP}.syncer", definition.topics.dirty
        ) as watch:
            _chaos(plan, injector, log, dsn, result)
            _clear_reach_faults(endpoints)
            _restore(stack, spawn, result, log)
            for member in fleet.members:
                member.thaw()
            last_fault_end = log.now()
            excluded = {(r.resource, r.entity_id) for r in injected.rows}
            differences = _settle(
                definition,
                endpoints,
                tenants,
                excluded,
                plan.settle_timeout_s,
                raise_on_timeout=False,
            )
            result.converge_seconds = round(log.now() - last_fault_end, 1)
        _judge_convergence(result, differences, excluded)
        result.faults, result.faults_skipped = dict(log.counts), dict(log.skipped)
        result.kinds_missing = sorted(
            k for k in (*plan.cycle_kinds(), "kill") if not log.counts.get(k)
        )
        letters = _judge_checks(result, definition, endpoints, tenants, injected)
        _judge_commits(result, definition, endpoints, watch, letters)
    finally:
        fleet.stop()
    _judge_leaks(result, endpoints, fleet, definition, dsn)
    result.passed = _passed(result)


def _chaos(
    plan: ChaosPlan, injector: Injector, log: FaultLog, dsn: str, result: ChaosResult
) -> None:
    """Load and faults together, until the row log has ``plan.changes`` changes and every kind
    of the first cycle has run; no worker outlives this call."""
    horizon = plan.changes / (plan.rate * CHANGES_PER_OPERATION)
    pending = schedule(plan, horizon_s=max(horizon * 3, 60.0))
    first_cycle = {f.kind for f in pending if f.kind != "kill"}
    load_done = threading.Event()
    started = time.monotonic()

    def load() -> None:
        round_no = 0
        while _source_changes(dsn) < plan.changes:
            round_no += 1
            run_load(dsn, plan.rate, LOAD_SLICE_S, plan.seed * 10_000 + round_no, progress=False)
        load_done.set()

    with concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="chaos") as pool:
        loader = pool.submit(load)
        running: list[concurrent.futures.Future[None]] = []
        while pending:
            if load_done.is_set() and first_cycle.issubset(log.counts.keys() | log.skipped.keys()):
                break
            fault: Fault = pending[0]
            if fault.at_s <= log.now():
                pending.pop(0)
                running.append(pool.submit(injector.run, fault))
                continue
            for name in injector.revive_crashed():
                result.crashes += 1
                log.say(f"{name} had ended on its own; started again")
            if loader.done() and loader.exception() is not None:
                break
            time.sleep(WATCH_S)
        loader.result()  # a load that failed fails the run, with its error
        result.load_seconds = round(time.monotonic() - started, 1)
        result.source_changes = _source_changes(dsn)
        concurrent.futures.wait(running)
    for name in injector.revive_crashed():
        result.crashes += 1
        log.say(f"{name} had ended on its own; started again")


def _restore(
    stack: LocalStack,
    spawn: Callable[[Callable[[], None]], None],
    result: ChaosResult,
    log: FaultLog,
) -> None:
    """Every component running again before the checks: one that ended on its own (not stopped
    by a fault that is over) is a finding, and is started again."""
    for name, health in stack.health().items():
        if health != "running":
            result.findings.append(f"{name} was {health} after the faults")
            log.say(f"{name} is {health}; starting it again")
            spawn(functools.partial(stack.start_component, name))


def _source_changes(dsn: str) -> int:
    """The row log's count, waited for while a fault has the database down."""
    deadline = time.monotonic() + DATABASE_WAIT_S
    while True:
        try:
            return checks.source_changes(dsn)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _inject(injected: _Injected, endpoints: StackEndpoints, log: FaultLog) -> str:
    """Produce one of every malformed event kind to the source topics, and create the bad rows;
    remember when each was produced."""
    with injected._lock:
        injected.marker += 1
        marker = injected.marker
    events = malformed.malformed_events(endpoints.topic_prefix, marker)
    producer = Producer({"bootstrap.servers": endpoints.bootstrap_servers, "linger.ms": 0})
    produced = []
    for event in events:
        producer.produce(event.topic, key=event.key, value=event.value)
        produced.append((event, time.time()))
    if producer.flush(30) != 0:
        raise RuntimeError("malformed events not acknowledged by the broker within 30 s")
    with injected._lock:
        injected.events += produced
    # The rows wait for the database, should the injection meet a Postgres outage.
    deadline = time.monotonic() + DATABASE_WAIT_S
    while True:
        try:
            rows = malformed.create_bad_rows(endpoints.postgres_dsn, marker)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    with injected._lock:
        injected.rows += rows
    return f"{len(events)} events of {len({e.kind for e in events})} kinds, {len(rows)} bad rows"


def _clear_reach_faults(endpoints: StackEndpoints) -> None:
    headers = {"authorization": f"Bearer {endpoints.sandbox_admin_token}"}
    with httpx.Client(base_url=endpoints.sandbox_url, headers=headers, timeout=10) as http:
        http.delete("/_admin/faults").raise_for_status()


def _settle(
    definition: SyncDefinition,
    endpoints: StackEndpoints,
    tenants: list[str],
    excluded: set[tuple[str, str]],
    timeout_s: float,
    raise_on_timeout: bool = True,
) -> list[Difference]:
    """Compare until the sandbox equals the database (``excluded`` entities aside)."""
    deadline = time.monotonic() + timeout_s
    while True:
        differences = asyncio.run(
            verify_sandbox(
                definition, endpoints.sandbox_url, endpoints.sandbox_admin_token, tenants
            )
        )
        if all(_equal_but(d, excluded) for d in differences):
            return differences
        if time.monotonic() > deadline:
            if raise_on_timeout:
                raise TimeoutError(f"the sandbox did not equal the database in {timeout_s:.0f} s")
            return differences
        time.sleep(SETTLE_POLL_S)


def _equal_but(difference: Difference, excluded: set[tuple[str, str]]) -> bool:
    def kept(keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [k for k in keys if (difference.resource, k[1]) not in excluded]

    return not (kept(difference.missing) or kept(difference.extra) or kept(difference.different))


def _judge_convergence(
    result: ChaosResult, differences: list[Difference], excluded: set[tuple[str, str]]
) -> None:
    result.converged = all(_equal_but(d, excluded) for d in differences)
    for d in differences:
        result.entities += d.checked
        result.different += sum(1 for k in d.different if (d.resource, k[1]) not in excluded)
        result.missing += sum(1 for k in d.missing if (d.resource, k[1]) not in excluded)
        result.lost_deletes += sum(1 for k in d.extra if (d.resource, k[1]) not in excluded)
        if not _equal_but(d, excluded):
            first = (d.different or d.missing or d.extra)[:3]
            result.findings.append(
                f"{d.resource}: {len(d.different)} different, {len(d.missing)} missing, "
                f"{len(d.extra)} deleted but present (first: {first})"
            )


def _judge_checks(
    result: ChaosResult,
    definition: SyncDefinition,
    endpoints: StackEndpoints,
    tenants: list[str],
    injected: _Injected,
) -> list[topics.DeadLetter]:
    """The checks of versions, audit and dead letters; returns the dead letters, read last (a
    refused row's dead letter may come after convergence, which leaves such rows out)."""
    backward = checks.backward_versions(
        endpoints.postgres_dsn,
        definition,
        endpoints.sandbox_url,
        endpoints.sandbox_admin_token,
        tenants,
    )
    result.versions_checked = backward.versions_checked
    result.backward = len(backward.backward)
    result.never_existed = len(backward.never_existed)
    result.findings += [f"backward: {o}" for o in backward.backward[:5]]
    result.findings += [f"never existed: {o}" for o in backward.never_existed[:5]]
    audit = checks.unaudited_versions(
        definition,
        endpoints.sandbox_url,
        endpoints.sandbox_admin_token,
        tenants,
        endpoints.bootstrap_servers,
    )
    result.unaudited = len(audit.unaudited)
    result.outcome_unknown = audit.by_sending
    result.findings += [f"unaudited: {o}" for o in audit.unaudited[:5]]
    letters = topics.dead_letters(endpoints.bootstrap_servers, definition.topics.dead_letter)
    _judge_dead_letters(result, injected, letters)
    return letters


def _judge_dead_letters(
    result: ChaosResult, injected: _Injected, letters: list[topics.DeadLetter]
) -> None:
    by_bytes = {(letter.key, letter.value): letter for letter in letters if letter.kind == "event"}
    result.malformed_kinds = len({event.kind for event, _ in injected.events})
    result.malformed_events = len(injected.events)
    for event, produced_at in injected.events:
        letter = by_bytes.get((event.key, event.value))
        if letter is None:
            result.malformed_not_dead_lettered += 1
            result.findings.append(f"malformed {event.kind}: no dead letter")
            continue
        if event.reason not in letter.reason:
            result.malformed_wrong_reason += 1
            result.findings.append(f"malformed {event.kind}: reason {letter.reason!r}")
        stall = max(0.0, letter.produced_at - produced_at)
        result.max_stall_seconds = max(result.max_stall_seconds, round(stall, 2))
        if stall > STALL_BOUND_S:
            result.stalls_over_bound += 1
            result.findings.append(f"malformed {event.kind}: dead-lettered after {stall:.1f} s")
    records = {letter.record_key for letter in letters if letter.kind == "record"}
    result.bad_rows = len(injected.rows)
    for row in injected.rows:
        if f"{row.resource}/{row.entity_id}" not in records:
            result.bad_rows_not_dead_lettered += 1
            result.findings.append(
                f"bad row {row.kind} ({row.resource}/{row.entity_id}): no dead letter"
            )


def _judge_commits(
    result: ChaosResult,
    definition: SyncDefinition,
    endpoints: StackEndpoints,
    watch: commits.CommitWatch,
    letters: list[topics.DeadLetter],
) -> None:
    dsn = endpoints.postgres_dsn
    history = checks.read_history(
        endpoints.sandbox_url,
        endpoints.sandbox_admin_token,
        tenant_id_mode=definition.destination.tenant_id_mode,
    )
    dead_lettered = {
        (resource, entity_id)
        for letter in letters
        if letter.kind == "record"
        for resource, _, entity_id in [letter.record_key.partition("/")]
    }
    report = commits.judge_commits(
        watch,
        topics.read_topic(endpoints.bootstrap_servers, definition.topics.dirty),
        dsn,
        definition,
        history.versions,
        checks.merchant_tenants(dsn),
        dead_lettered,
    )
    result.commit_moves = report.commit_moves
    result.keys_judged = report.keys_judged
    result.early_commits = len(report.early)
    result.findings += [f"committed before its outcome: {e}" for e in report.early[:5]]
    if not report.keys_judged:
        result.findings.append("the commit check judged no dirty key (no commit was seen)")


def _judge_leaks(
    result: ChaosResult,
    endpoints: StackEndpoints,
    fleet: Fleet,
    definition: SyncDefinition,
    dsn: str,
) -> None:
    secrets = {
        "the Reach JWT secret": endpoints.reach_jwt_secret,
        "the Reach static key": endpoints.reach_static_key,
        "the sandbox admin token": endpoints.sandbox_admin_token,
        "the database password": checks.dsn_password(dsn),
    }
    leaks = checks.leaked_secrets(
        fleet.log_paths(),
        checks.read_audit(endpoints.bootstrap_servers, definition.topics.audit)[0],
        {k: v for k, v in secrets.items() if v},
        checks.unmapped_values(dsn),
        checks.sent_pii_values(dsn, definition),
    )
    result.leaks = len(leaks.found)
    result.findings += [f"leak: {f}" for f in leaks.found[:10]]


def _passed(result: ChaosResult) -> bool:
    return (
        result.converged
        and not result.kinds_missing
        and result.different == result.missing == result.lost_deletes == 0
        and result.backward == result.never_existed == result.unaudited == 0
        and result.early_commits == 0
        and result.keys_judged > 0
        and result.malformed_not_dead_lettered == result.malformed_wrong_reason == 0
        and result.bad_rows_not_dead_lettered == 0
        and result.stalls_over_bound == 0
        and result.leaks == 0
        and result.crashes == 0
    )


def describe_kinds() -> str:
    return "\n".join(f"  {kind:20} {text}" for kind, text in KIND_DESCRIPTIONS.items())


def report(result: ChaosResult) -> list[str]:
    """The human report; the JSON line follows it."""
    verdict = "PASSED" if result.passed else "FAILED"
    lines = [
        f"chaos run, seed {result.seed}: {verdict}",
        f"  source changes      {result.source_changes} in {result.load_seconds:.0f} s of load",
        f"  faults              {sum(result.faults.values())}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(result.faults.items())),
        f"  skipped             {result.faults_skipped or 'none'}",
        f"  kinds never run     {result.kinds_missing or 'none'}",
        f"  crashes             {result.crashes} (members that ended without being killed)",
        f"  converged           {result.converged}, "
        f"{result.converge_seconds} s after the last fault",
        f"  entities            {result.entities}: {result.different} different, "
        f"{result.missing} missing, {result.lost_deletes} deleted but present",
        f"  versions            {result.versions_checked} checked: {result.backward} backward, "
        f"{result.never_existed} never existed, {result.unaudited} unaudited "
        f"({result.outcome_unknown} audited only as sending: their process was killed)",
        f"  commits             {result.commit_moves} seen; {result.keys_judged} dirty keys "
        f"judged when their offset was committed: {result.early_commits} before Reach held "
        f"their state",
        f"  malformed events    {result.malformed_events} of {result.malformed_kinds} kinds: "
        f"{result.malformed_not_dead_lettered} not dead-lettered, "
        f"{result.malformed_wrong_reason} with another reason; longest stall "
        f"{result.max_stall_seconds} s ({result.stalls_over_bound} over {STALL_BOUND_S:g} s)",
        f"  bad rows            {result.bad_rows}: "
        f"{result.bad_rows_not_dead_lettered} not dead-lettered",
        f"  leaks               {result.leaks}",
    ]
    lines += [f"  finding: {f}" for f in result.findings[:30]]
    return lines
