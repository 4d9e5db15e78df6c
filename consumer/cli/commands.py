"""``reach-sync run | validate | plan | preview | dlq | audit | status``: the definition at work.

Every command takes the definition the same way, as its first argument or with ``--config`` (either
one; both only if they name the same file), loads it the same way and reports a bad one the same
way: one line per problem, naming the file, the field and the reason, and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson

from consumer.cli.common import (
    EXIT_CONFIG,
    add_definition,
    definition_path,
    failed,
    load,
    non_negative,
)
from consumer.cli.masking import masked
from consumer.cli.plan import describe_plan, plan_command
from consumer.cli.process_tuning import tune_gc, tune_malloc
from consumer.cli.records import add_audit_commands, add_dlq_commands
from consumer.cli.run_report import ProgressLog, final_stats
from consumer.cli.status import add_status_command
from consumer.config import SyncDefinition
from consumer.config_file import located
from consumer.definition_diff import diff_definitions
from consumer.errors import ConfigurationError, DefinitionError, Retryable, SyncError
from consumer.kafka import abandoned_consumers
from consumer.observe.logs import definition_secrets
from consumer.retry_policy import retry_delay
from consumer.router.dirty import EntityId
from consumer.sink.dedup import LastSentStore
from consumer.sink.projection import project
from consumer.sink.recompute import SourceDatabase
from consumer.source_check import SAMPLE_IDS, check_source

__all__ = ["add_sync_commands"]

log = logging.getLogger(__name__)

# run: a progress line in the log this often (INFO).
PROGRESS_INTERVAL_S = 30.0
# Waiting for an unreachable source database before starting (exponential, full jitter).
SOURCE_RETRY_BASE_S = 0.5
SOURCE_RETRY_CAP_S = 30.0
ROLE_HELP = (
    "which stages this process runs. all (the default): both, in one process. router: stage 1 "
    "only: reads the Debezium topics and writes a dirty key per changed entity to the dirty "
    "topic (uses the broker and the source database, never Reach or Redis). syncer: stage 2 "
    "only: reads the dirty topic, recomputes each entity from the source database and sends "
    "what changed to Reach (uses the broker, the database, Redis and Reach). Run routers and "
    "syncers as separate processes to scale them apart."
)


def add_sync_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run reach-sync (both stages, or one with --role)")
    add_definition(run)
    run.add_argument("--role", choices=("all", "router", "syncer"), default="all", help=ROLE_HELP)
    run.set_defaults(handler=_run)

    validate = sub.add_parser("validate", help="check a sync definition and exit")
    add_definition(validate)
    validate.add_argument(
        "--source",
        action="store_true",
        help="also check it against the source database: tables, columns, types, queries",
    )
    validate.add_argument(
        "--sample",
        type=non_negative,
        default=SAMPLE_IDS,
        metavar="N",
        help=f"with --source, run each resource's query with up to N of its ids from the "
        f"database (default {SAMPLE_IDS}; 0: none)",
    )
    validate.add_argument(
        "--reach",
        action="store_true",
        help="also check it against the destination's Reach schemas: schemas, required and "
        "unknown fields, formats against types, groups, $ref targets",
    )
    validate.set_defaults(handler=_validate)

    plan = sub.add_parser("plan", help="which entities a change to one row makes dirty")
    add_definition(plan)
    plan.add_argument("--table", required=True, help="schema.table, e.g. public.transactions")
    plan.add_argument("--row", required=True, help="the row as JSON (the after image)")
    plan.add_argument("--op", default="u", choices=("c", "u", "d", "r"))
    plan.add_argument("--before", help="an update's before image as JSON")
    plan.add_argument("--key", default="id", help="the table's key columns, comma-separated")
    plan.set_defaults(handler=_plan)

    preview = sub.add_parser(
        "preview", help="recompute and project one entity, and compare with what was last sent"
    )
    add_definition(preview)
    preview.add_argument("resource")
    preview.add_argument("id")
    preview.add_argument("--show-pii", action="store_true", help="print PII fields' values")
    preview.set_defaults(handler=_preview)

    diff = sub.add_parser(
        "diff", help="what changes between two definitions: re-syncs, triggers, delivery, state"
    )
    diff.add_argument("old", type=Path, metavar="OLD", help="the definition as it is")
    diff.add_argument("new", type=Path, metavar="NEW", help="the definition as it will be")
    diff.set_defaults(handler=_diff)

    add_dlq_commands(sub)
    add_audit_commands(sub)
    add_status_command(sub)


def check_reach(definition: SyncDefinition, path: Path) -> None:
    """consumer/reach_check.py's check, imported when called: it brings the Reach client (httpx,
    aiohttp), which `run --role router` never uses."""
    from consumer.reach_check import check_reach as check

    check(definition, path)


def _diff(args: argparse.Namespace) -> int:
    """Exit 0: the same; 1: they differ (as diff(1)); 2: a definition does not load."""
    old, new = load(args.old), load(args.new)
    if old is None or new is None:
        return EXIT_CONFIG
    differences = diff_definitions(old, new)
    for difference in differences:
        print(difference.line())
    if not differences:
        print(f"{args.old} and {args.new}: no difference that changes what reach-sync does")
    return 1 if differences else 0


def _validate(args: argparse.Namespace) -> int:
    path = definition_path(args)
    definition = load(path)
    if definition is None:
        return EXIT_CONFIG
    resources = ", ".join(
        f"{name} ({r.reach_schema}, {r.delivery.mode})" for name, r in definition.resources.items()
    )
    tables = ", ".join(sorted(definition.trigger_tables()))
    checks: dict[str, Callable[[SyncDefinition, Path], DefinitionError | None]] = {}
    if args.source:
        checks["the source database"] = partial(check_source, sample=args.sample)
    if args.reach:
        checks["Reach's schemas"] = check_reach
    # Every check runs, and every problem of all of them is told at once.
    problems: list[str] = []
    code = 0
    for check in checks.values():
        try:
            _noted(check(definition, path))
        except DefinitionError as exc:
            problems += exc.problems
        except SyncError as exc:
            code = max(code, failed("validate", exc))
    if problems:
        return max(code, _told(located(path, problems)))
    if code:
        return code
    checked = f" (and against {' and '.join(checks)})" if checks else ""
    print(f"{path}: valid{checked}. resources: {resources}; triggered by: {tables}")
    return 0


def _noted(notes: DefinitionError | None) -> None:
    """What a check found that does not stop ``run`` (some rows' data): told, one
    ``file:line: path: reason`` line each, and not refused."""
    if notes is not None:
        print(str(notes), file=sys.stderr)


def _told(error: DefinitionError) -> int:
    """Every problem, one ``file:line: path: reason`` line each."""
    print(str(error), file=sys.stderr)
    return EXIT_CONFIG


def _checked_source(
    definition: SyncDefinition, path: Path, stop: threading.Event
) -> DefinitionError | None:
    """``check_source``, waited for while the database cannot be reached (with backoff, until
    ``stop``): an unreachable database is an outage to ride out, as it is once running (a
    process started during one, a restarted pod say, would otherwise exit and be restarted in
    a loop). A definition the database refuses still stops the start at once."""
    attempt = 0
    while True:
        try:
            return check_source(definition, path)
        except Retryable as exc:
            attempt += 1
            delay = retry_delay(attempt, base_s=SOURCE_RETRY_BASE_S, cap_s=SOURCE_RETRY_CAP_S)
            log.warning("%s; checking again in %.1f s", exc, delay)
            if stop.wait(delay):
                return None


def _start_problems(
    definition: SyncDefinition, path: Path, role: str, stop: threading.Event
) -> list[str]:
    """What in the definition stops ``run`` from starting, as the database and Reach show it."""
    problems: list[str] = []
    try:
        # A column that is not there would fail silently for hours: refuse to start instead.
        _noted(_checked_source(definition, path, stop))
    except DefinitionError as exc:
        problems += exc.problems
    if role != "router" and not stop.is_set():  # the router never talks to Reach
        try:
            # So would a field Reach refuses in every record. But Reach being down (or refusing
            # to list its schemas) is the pipeline's to ride out: it does not stop a start.
            check_reach(definition, path)
        except DefinitionError as exc:
            problems += exc.problems
        except SyncError as exc:
            log.warning("not checked against Reach's schemas (%s); starting anyway", exc)
    return problems


def _run(args: argparse.Namespace) -> int:
    from consumer.observe.telemetry import start_tracing, stop_tracing

    tune_malloc()  # before any thread starts (librdkafka's, the router's)
    from consumer.service import ServiceStats, install_stop_signals, run_service

    # A service logs what it does at INFO (its partitions, progress, health port); -v: DEBUG.
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    path = definition_path(args)
    definition = load(path, level)
    if definition is None:
        return EXIT_CONFIG
    stop = threading.Event()
    install_stop_signals(stop)
    try:
        problems = _start_problems(definition, path, args.role, stop)
    except SyncError as exc:
        return failed("run", exc)
    if stop.is_set():
        return 0
    if problems:
        return _told(located(path, problems))
    stats = ServiceStats()
    reporter = ProgressLog(stats, args.role, PROGRESS_INTERVAL_S)
    code = 0
    try:
        start_tracing(definition_secrets(definition))  # as OTEL_* say; off by default
        tune_gc()  # what the start made lives as long as the process
        reporter.start()
        stats = run_service(definition, stop, role=args.role, stats=stats)
    except ConfigurationError as exc:
        print(f"reach-sync: configuration error: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    else:
        if stats.router_error is not None:
            code = EXIT_CONFIG if isinstance(stats.router_error, ConfigurationError) else 1
            print(f"reach-sync: the router stopped: {stats.router_error}", file=sys.stderr)
        print(json.dumps(final_stats(stats, args.role)), file=sys.stderr)
    finally:
        reporter.stop()
    stop_tracing()  # export what is still buffered, before any os._exit below
    if abandoned_consumers() or code:
        # Consumers released without a LeaveGroup (the local broker, or a broker that stopped
        # answering; see release_consumer) must not get one from a destructor on the way out,
        # and a stage that did not stop may still be using its consumer.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _plan(args: argparse.Namespace) -> int:
    definition = load(definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    try:
        row = json.loads(args.row)
        before = None if args.before is None else json.loads(args.before)
        entities = plan_command(
            definition, args.table, row, op=args.op, before=before, key_columns=args.key.split(",")
        )
    except (ValueError, KeyError, SyncError) as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 1
    print(describe_plan(args.table, args.op, entities))
    return 0


def _entity_id(text: str) -> EntityId:
    """Ids arrive from Debezium typed; on the command line an integer-looking id is an int."""
    return int(text) if text.lstrip("-").isdigit() else text


def _preview(args: argparse.Namespace) -> int:
    definition = load(definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    if args.resource not in definition.resources:
        known = ", ".join(definition.resources)
        print(
            f"preview: no resource {args.resource!r} (the definition has {known})", file=sys.stderr
        )
        return 1
    try:
        return asyncio.run(
            _preview_one(definition, args.resource, _entity_id(args.id), args.show_pii)
        )
    except SyncError as exc:
        print(f"preview: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


async def _preview_one(
    definition: SyncDefinition, name: str, entity_id: EntityId, show_pii: bool
) -> int:
    resource = definition.resources[name]
    db = SourceDatabase(definition.source.database)
    store = LastSentStore(definition.redis.url.get_secret_value(), definition.redis.key_prefix)
    await db.open()
    try:
        recomputed = await db.recompute(resource, [entity_id])
        known = await store.get_many(name, [entity_id])
    finally:
        await db.close()
        await store.close()
    previous = None if known is None else known.get(str(entity_id))
    if recomputed.failed:  # its row cannot be read: _preview prints why
        raise next(iter(recomputed.failed.values()))
    if recomputed.gone:
        sent = "Reach has it (it would be deleted)" if previous else "nothing was sent for it"
        print(f"{name} {entity_id}: no row in the source database; {sent}")
        return 0
    projected = project(resource, next(iter(recomputed.rows.values())))
    record = projected.record if show_pii else masked(definition, name, projected.record)
    print(f"{name} {entity_id} → tenant {projected.tenant}, schema {resource.reach_schema}")
    print(orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    if known is None:
        verdict = "the dedup store is unavailable: it would be sent"
    elif previous is None:
        verdict = "never sent: it would be sent"
    elif previous.tenant == projected.tenant and previous.hash == projected.hash:
        verdict = "unchanged since the last send: it would be skipped"
    else:
        verdict = f"changed since the last send (hash {previous.hash[:12]} → {projected.hash[:12]})"
    print(f"hash {projected.hash[:12]}: {verdict}")
    return 0
