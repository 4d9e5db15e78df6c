"""Shared helpers of the end-to-end tests: SQL, the sandbox's admin API, polling with deadlines,
and reach-sync running in a thread (live stats) or as a real process (crash and restart).

Every wait here polls a real observable until a deadline; nothing sleeps for a fixed time to
"let things settle".
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import redis
from confluent_kafka import Consumer, Message, TopicPartition
from reach_devstack.process import ManagedProcess, ProcessSpec
from reach_devstack.stack import StackEndpoints
from reach_devstack.verify import Difference, verify_sandbox

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.records.dlq_read import Entry, Filter, MissingTopic, read_dead_letters
from consumer.service import ServiceStats, run_service
from tests.e2e.conftest import EXAMPLE, STOP_BOUND_S, TENANTS, shop_env

REPO = Path(__file__).parents[2]
CONVERGE_TIMEOUT_S = 120.0
POLL_S = 0.2
# A process joining a group whose previous members died without a LeaveGroup is assigned after
# about session timeout + 5 s on the local broker (docs/local-broker-group-rejoin.md).
REJOIN_S = 11.0

T = TypeVar("T")
Version = dict[str, Any]


# --- polling -------------------------------------------------------------------------------------


def wait_for(
    probe: Callable[[], T | None],
    timeout_s: float,
    what: str,
    guard: Callable[[], None] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail the test at the deadline, or at
    once when ``guard`` raises (e.g. the pipeline under test died)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if guard is not None:
            guard()
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def wait_quiet(fingerprint: Callable[[], object], quiet_s: float, timeout_s: float) -> None:
    """Wait until ``fingerprint()`` has not changed for ``quiet_s`` (work in flight is done)."""
    deadline = time.monotonic() + timeout_s
    last, since = fingerprint(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        if time.monotonic() > deadline:
            raise AssertionError(f"still busy after {timeout_s:.0f} s: {last}")
        time.sleep(POLL_S)
        now = fingerprint()
        if now != last:
            last, since = now, time.monotonic()


def converged(
    definition: SyncDefinition, endpoints: StackEndpoints, timeout_s: float = CONVERGE_TIMEOUT_S
) -> list[Difference]:
    """Poll until the sandbox equals the projection; the last differences either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        differences = asyncio.run(
            verify_sandbox(
                definition, endpoints.sandbox_url, endpoints.sandbox_admin_token, TENANTS
            )
        )
        if all(d.equal for d in differences) or time.monotonic() > deadline:
            return differences
        time.sleep(1.0)


def assert_converged(
    definition: SyncDefinition, endpoints: StackEndpoints, timeout_s: float = CONVERGE_TIMEOUT_S
) -> None:
    differences = converged(definition, endpoints, timeout_s)
    assert all(d.equal for d in differences), differences


# --- the source database -------------------------------------------------------------------------


def sql(dsn: str, *statements: str | tuple[str, Sequence[Any]]) -> None:
    """Each statement in its own transaction (autocommit)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            if isinstance(statement, tuple):
                conn.execute(statement[0], statement[1])
            else:
                conn.execute(statement)


def insert_customer(dsn: str, merchant_id: int, email: str, **columns: Any) -> tuple[int, str]:
    """A new customer; returns its id and its tenant (the merchant's external id)."""
    names = ["merchant_id", "email", *columns]
    values = [merchant_id, email, *columns.values()]
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            f"INSERT INTO customers ({', '.join(names)}) VALUES"
            f" ({', '.join(['%s'] * len(values))}) RETURNING id,"
            " (SELECT external_id FROM merchants WHERE id = customers.merchant_id)",
            values,
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def insert_transaction(dsn: str, customer_id: int, amount_cents: int, status: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO transactions (merchant_id, customer_id, status, amount_cents)"
            " SELECT merchant_id, id, %s, %s FROM customers WHERE id = %s RETURNING id",
            (status, amount_cents, customer_id),
        ).fetchone()
    assert row is not None
    return int(row[0])


# --- the sandbox's admin API ---------------------------------------------------------------------


@dataclass(frozen=True)
class Reordered:
    """Writes applied after a later-arriving one: ``batches`` that a shuffled order let another
    batch of their tenant overtake, and the ``entities`` (tenant/schema/id) written out of
    arrival order, which a client keeping one unfinished batch per entity never sees."""

    batches: int
    entities: list[str]


def _behind(versions: Iterable[Version], key: Callable[[Version], str]) -> list[str]:
    """The keys of versions that arrived before an earlier-applied version of the same key."""
    latest: dict[str, float] = {}
    found: list[str] = []
    for version in versions:
        name, arrived = key(version), version["arrivedAt"]
        if arrived < latest.get(name, arrived):
            found.append(name)
        latest[name] = max(arrived, latest.get(name, arrived))
    return found


@dataclass
class Sandbox:
    """The Reach sandbox's admin API: history, request log, faults, batch order."""

    url: str
    admin_token: str

    @classmethod
    def of(cls, endpoints: StackEndpoints) -> Sandbox:
        return cls(endpoints.sandbox_url, endpoints.sandbox_admin_token)

    def _client(self) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.admin_token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def _get(self, path: str, params: Mapping[str, Any]) -> Any:
        with self._client() as http:
            return http.get(path, params=dict(params)).raise_for_status().json()

    def history(
        self, tenant: str, schema: str, external_id: str, after_seq: int = 0
    ) -> list[Version]:
        """Every version of one resource after ``after_seq``, oldest first."""
        params = {"tenant": tenant, "schema": schema, "externalId": external_id}
        versions: list[Version] = self._get(
            "/_admin/history", {**params, "afterSeq": after_seq, "limit": 10000}
        )["versions"]
        return versions

    def versions_after(self, seq: int, schema: str | None = None) -> list[Version]:
        """Every version after ``seq`` (of one schema, by name), oldest first."""
        ids = {s["id"] for s in self._get("/_admin/schemas", {})["schemas"] if s["name"] == schema}
        versions: list[Version] = []
        while page := self._get("/_admin/history", {"afterSeq": seq, "limit": 10000})["versions"]:
            versions += [v for v in page if schema is None or v["schemaId"] in ids]
            seq = page[-1]["seq"]
        return versions

    def stored(self, tenant_id: str, schema: str) -> int:
        """How many resources of ``schema`` (by name) the tenant (Reach's id) holds now."""
        per_tenant: dict[str, dict[str, int]] = self._get("/_admin/counts", {})["resources"]
        return per_tenant.get(tenant_id, {}).get(schema, 0)

    def reset(self) -> None:
        """Back to the configured start: no data, batches, requests or faults."""
        with self._client() as http:
            http.post("/_admin/reset").raise_for_status()

    def last_version_seq(self) -> int:
        """The newest ``seq`` of the whole history (0 when empty)."""
        seq = 0
        while True:
            page = self._get("/_admin/history", {"afterSeq": seq, "limit": 10000})["versions"]
            if not page:
                return seq
            seq = page[-1]["seq"]

    def reordered(self, after_seq: int) -> Reordered:
        """What applied out of arrival order among the versions after ``after_seq``."""
        versions: list[Version] = []
        seq = after_seq
        while page := self._get("/_admin/history", {"afterSeq": seq, "limit": 10000})["versions"]:
            versions += page
            seq = page[-1]["seq"]
        first_seen: dict[str, Version] = {}  # each batch's first version, in apply order
        for version in versions:
            if version["batchId"] is not None:
                first_seen.setdefault(version["batchId"], version)
        return Reordered(
            len(_behind(first_seen.values(), lambda v: v["tenantId"])),
            _behind(versions, lambda v: f"{v['tenantId']}/{v['schemaId']}/{v['externalId']}"),
        )

    def current(self, tenant: str, schema: str, external_id: str) -> dict[str, Any] | None:
        """The resource's data as Reach has it now, or None."""
        with self._client() as http:
            response = http.get(f"/_admin/resources/{tenant}/{schema}/{external_id}")
            if response.status_code == 404:
                return None
            data: dict[str, Any] = response.raise_for_status().json()["resource"]["data"]
            return data

    def requests(self, after_seq: int = 0, path_prefix: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"afterSeq": after_seq, "limit": 10000}
        if path_prefix is not None:
            params["pathPrefix"] = path_prefix
        found: list[dict[str, Any]] = self._get("/_admin/requests", params)["requests"]
        return found

    def last_request_seq(self) -> int:
        seq = 0
        while page := self.requests(seq):
            seq = page[-1]["seq"]
        return seq

    def add_fault(self, spec: Mapping[str, Any]) -> str:
        with self._client() as http:
            fault_id: str = (
                http.post("/_admin/faults", json=dict(spec)).raise_for_status().json()["id"]
            )
            return fault_id

    def clear_faults(self) -> None:
        with self._client() as http:
            http.delete("/_admin/faults").raise_for_status()

    @contextmanager
    def faults(self, *specs: Mapping[str, Any]) -> Iterator[list[str]]:
        """Faults active inside the block; every fault is cleared when it ends, however."""
        try:
            yield [self.add_fault(spec) for spec in specs]
        finally:
            self.clear_faults()

    def batch_order(self) -> dict[str, Any]:
        """``{"shuffle", "seed", "gather_seconds"}``: the order a tenant's batches apply in."""
        found: dict[str, Any] = self._get("/_admin/batch-order", {})
        return found

    def set_batch_order(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        with self._client() as http:
            answer = http.put("/_admin/batch-order", json=dict(settings)).raise_for_status()
            found: dict[str, Any] = answer.json()
            return found

    @contextmanager
    def shuffled_batches(self, seed: int, gather_seconds: float) -> Iterator[dict[str, Any]]:
        """Inside the block each tenant's queued batches apply in a seeded random order, as Reach
        allows (it promises no order across batches); the previous order is restored when the
        block ends, however. Yields the settings in force."""
        previous = self.batch_order()
        try:
            yield self.set_batch_order(
                {"shuffle": True, "seed": seed, "gather_seconds": gather_seconds}
            )
        finally:
            self.set_batch_order(previous)


# --- reach-sync in a thread ----------------------------------------------------------------------


@dataclass
class LivePipeline:
    """reach-sync (both stages) running in a thread; ``stats`` are updated as it works."""

    name: str
    definition: SyncDefinition
    stop: threading.Event
    thread: threading.Thread
    stats: ServiceStats

    def counters(self) -> dict[str, int]:
        """The syncer's counters and the router's event count, as of now."""
        found = {k: v for k, v in vars(self.stats.syncer).items() if isinstance(v, int)}
        router = self.stats.router
        found["router_events"] = router.events if router is not None else 0
        found["router_dead_lettered"] = router.dead_lettered if router is not None else 0
        return found

    def check_alive(self) -> None:
        assert self.stats.router_error is None, self.stats.router_error
        assert self.thread.is_alive(), "the pipeline stopped on its own"


@contextmanager
def pipeline_thread(
    endpoints: StackEndpoints,
    name: str,
    env: Mapping[str, str] | None = None,
    config: Path = EXAMPLE,
) -> Iterator[LivePipeline]:
    """Run reach-sync on ``config`` (the example by default) in a thread until the block ends;
    then stop it and join it (bounded).

    Its consumers leave without a LeaveGroup (the local stack's setting) and stay members until
    the process ends, so the same ``name`` cannot be started again in this process: restarts go
    through ``PipelineProcess``.
    """
    definition = load_definition(config, {**shop_env(endpoints, name), **(env or {})})
    stop = threading.Event()
    stats = ServiceStats()
    thread = threading.Thread(
        target=run_service,
        args=(definition, stop),
        kwargs={"stats": stats},
        name=f"pipeline-{name}",
        daemon=True,
    )
    thread.start()
    try:
        yield LivePipeline(name, definition, stop, thread, stats)
    finally:
        stop.set()
        thread.join(STOP_BOUND_S)
        assert not thread.is_alive(), "the pipeline did not stop within its bound"


def caught_up(running: LivePipeline, probe: Callable[[], bool], timeout_s: float = 90.0) -> None:
    """Wait until a new pipeline has read everything already in the topics: ``probe`` (the last
    thing written before it started has reached the sandbox) holds, then nothing moves for 2 s."""
    wait_for(probe, timeout_s, "the pipeline to catch up", guard=running.check_alive)
    wait_quiet(running.counters, quiet_s=2.0, timeout_s=timeout_s)


# --- reach-sync as a real process ----------------------------------------------------------------

# The service as a process, like `reach-sync run`, that also prints its syncer counters (one JSON
# line, prefixed, whenever they change) so a test can watch a process it restarts. Like the CLI,
# it ends with os._exit: its consumers were released without a LeaveGroup.
_STATS_PREFIX = "E2E-STATS "
_LIVE_RUNNER = f"""
import json, os, sys, threading
from pathlib import Path
from consumer.config_file import load_definition
from consumer.service import ServiceStats, install_stop_signals, run_service

stop = threading.Event()
install_stop_signals(stop)
stats = ServiceStats()

def counters():
    return {{k: v for k, v in vars(stats.syncer).items() if isinstance(v, int)}}

def report():
    last = None
    while True:
        done = stop.wait(0.1)
        now = counters()
        if now != last:
            sys.stdout.write({_STATS_PREFIX!r} + json.dumps(now) + "\\n")
            sys.stdout.flush()
            last = now
        if done:
            return

reporter = threading.Thread(target=report, daemon=True)
reporter.start()
run_service(load_definition(Path(sys.argv[1])), stop, stats=stats)
reporter.join()
sys.stdout.write({_STATS_PREFIX!r} + json.dumps(counters()) + "\\n")
sys.stdout.flush()
os._exit(1 if stats.router_error is not None else 0)
"""


class PipelineProcess:
    """reach-sync as a child process (its own process group, dies with the test run).

    ``live_stats=False`` runs the real command, ``python -m consumer.cli.main run --config ...``;
    ``True`` runs the same service through a tiny runner that also reports its counters.
    """

    def __init__(
        self,
        endpoints: StackEndpoints,
        name: str,
        log_dir: Path,
        *,
        live_stats: bool = False,
        config: Path = EXAMPLE,
    ) -> None:
        self.name = name
        self.config = config
        self.definition = load_definition(config, shop_env(endpoints, name))
        self._env = {**os.environ, **shop_env(endpoints, name), "PYTHONUNBUFFERED": "1"}
        self._live = live_stats
        self._log_dir = log_dir
        self._runs = 0
        self._process: ManagedProcess | None = None

    @property
    def log_path(self) -> Path:
        return self._log_dir / f"{self.name}.{self._runs}.log"

    def start(self) -> None:
        assert self._process is None or not self._process.alive(), "already running"
        self._runs += 1
        if self._live:
            argv = [sys.executable, "-c", _LIVE_RUNNER, str(self.config)]
        else:
            argv = [sys.executable, "-m", "consumer.cli.main", "run", "--config", str(self.config)]
        spec = ProcessSpec(f"reach-sync-{self.name}", argv, self.log_path, self._env, REPO)
        self._process = ManagedProcess(spec)
        self._process.start()

    def _running(self) -> ManagedProcess:
        assert self._process is not None, "not started"
        return self._process

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def check_alive(self) -> None:
        code = self._running().exit_code()
        assert code is None, f"reach-sync exited with {code}; log: {self.log_path}"

    def kill(self) -> int:
        """``kill -9``: no drain, no commit, no goodbye. Returns the exit code (-9)."""
        process = self._running()
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        return self._wait_exit(10.0)

    @property
    def pid(self) -> int | None:
        return self._running().pid

    def terminate(self) -> int:
        """SIGTERM: drain, commit, exit; bounded like the in-thread pipeline."""
        process = self._running()
        assert process.pid is not None
        os.kill(process.pid, signal.SIGTERM)
        return self.wait_exit()

    def wait_exit(self, timeout_s: float = STOP_BOUND_S) -> int:
        """The exit code, once the process has ended; fails after ``timeout_s``."""
        return self._wait_exit(timeout_s)

    def _wait_exit(self, timeout_s: float) -> int:
        process = self._running()
        try:
            wait_for(lambda: process.exit_code() is not None, timeout_s, f"{self.name} to exit")
        except AssertionError:
            process.stop(grace_s=0)
            raise
        code = process.exit_code()
        assert code is not None
        return code

    def ensure_stopped(self) -> None:
        if self._process is not None:
            self._process.stop(grace_s=STOP_BOUND_S)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def counters(self) -> dict[str, int]:
        """The latest counters the running (or last) process reported; {} before the first."""
        assert self._live, "counters need live_stats=True"
        lines = [line for line in self.log().splitlines() if line.startswith(_STATS_PREFIX)]
        if not lines:
            return {}
        found: dict[str, int] = json.loads(lines[-1][len(_STATS_PREFIX) :])
        return found


# --- Redis and Kafka -----------------------------------------------------------------------------


def delete_keys(redis_url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN, never FLUSHDB: other tests use other prefixes)."""
    client = redis.Redis.from_url(redis_url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.delete(*batch))
                batch = []
        if batch:
            deleted += int(client.delete(*batch))
        return deleted
    finally:
        client.close()


def keys_under(redis_url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        client.close()


def read_topic(
    bootstrap_servers: str,
    topic: str,
    done: Callable[[list[Message]], bool],
    timeout_s: float,
) -> list[Message]:
    """Read a topic from the start (every partition, no group commits) until ``done(messages)``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"e2e-reader-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        messages: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while not done(messages):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{topic}: {len(messages)} messages after {timeout_s:.0f} s, not all expected"
                )
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    messages.append(message)
        return messages
    finally:
        # An assigned (not subscribed) consumer is in no group: closing it sends no LeaveGroup.
        consumer.close()


def headers_of(message: Message) -> dict[str, bytes]:
    """A message's headers by name (the last of a repeated name); absent values left out."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {k: v.encode() if isinstance(v, str) else v for k, v in pairs if v is not None}


class SyncerProcess:
    """``reach-sync run --role syncer`` as a child process; its final counters from its log."""

    def __init__(self, name: str, env: Mapping[str, str], log_path: Path) -> None:
        argv = [sys.executable, "-m", "consumer.cli.main", "run", "--config", str(EXAMPLE)]
        spec = ProcessSpec(
            f"reach-sync-{name}-syncer",
            [*argv, "--role", "syncer"],
            log_path,
            {**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            REPO,
        )
        self.log_path = log_path
        self.process = ManagedProcess(spec)

    def check_alive(self) -> None:
        code = self.process.exit_code()
        assert code is None, f"the syncer exited with {code}; log: {self.log_path}"

    def terminate(self) -> dict[str, int]:
        """SIGTERM (drain, commit, exit 0); the counters it printed on the way out."""
        self.process.stop(grace_s=90)
        code = self.process.exit_code()
        log = self.log_path.read_text(errors="replace")
        assert code == 0, (code, log[-4000:])
        final = [line for line in log.splitlines() if line.startswith('{"syncer"')]
        assert final, log[-4000:]
        counters: dict[str, int] = json.loads(final[-1])["syncer"]
        return counters


def dead_letters_matching(definition: SyncDefinition, chosen: Filter) -> list[Entry]:
    """The matching dead letters; none while the topic does not exist yet (the pipeline
    creates it as it starts)."""
    try:
        return read_dead_letters(definition, chosen).entries
    except MissingTopic:
        return []


def dirty_partition_of(
    bootstrap: str, topic: str, keys: set[bytes], wanted: bytes
) -> tuple[int, list[bytes]]:
    """The dirty-topic partition of ``wanted`` and the other ``keys`` in that partition."""
    seen: dict[bytes, int] = {}

    def all_seen(messages: list[Message]) -> bool:
        seen.clear()
        for message in messages:
            key = message.key()
            if key in keys:
                seen[key] = message.partition() or 0
        return keys <= set(seen)

    read_topic(bootstrap, topic, all_seen, timeout_s=60)
    partition = seen[wanted]
    return partition, sorted(k for k, p in seen.items() if p == partition and k != wanted)
