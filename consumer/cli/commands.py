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
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from consumer.cli.plan import describe_plan, plan_command
from consumer.cli.progress import Progress
from consumer.cli.run_report import ProgressLog, final_stats
from consumer.cli.status_report import (
    DEFAULT_INTERVAL_S,
    Sample,
    StatusReader,
    gather,
    health_urls,
    readyz_url,
)
from consumer.cli.status_view import render
from consumer.config import SyncDefinition, load_definition
from consumer.errors import BadRecord, ConfigurationError, DefinitionError, Retryable, SyncError
from consumer.kafka import abandoned_consumers
from consumer.observe.logs import configure_logging, definition_secrets
from consumer.records.audit_read import Query, history_lines, read_history
from consumer.records.audit_read import entry_json as audit_entry_json
from consumer.records.dlq_read import (
    KINDS,
    DeadLetterRead,
    Filter,
    entry_json,
    parse_time,
    read_dead_letters,
    table_lines,
)
from consumer.records.dlq_replay import ReplayPlan, enqueue, plan_replay
from consumer.router.dirty import EntityId
from consumer.router.topics import ensure_topics
from consumer.sink.dedup import LastSentStore
from consumer.sink.projection import project
from consumer.sink.recompute import SourceDatabase

__all__ = ["add_sync_commands"]

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
# dlq: the filter matched no dead letter. Told apart from a failure so that a script can tell
# "nothing to do here" (a mistyped --id, say) from "could not do it".
EXIT_NO_MATCH = 3
# dlq replay: what could be replayed was re-enqueued, but some selected dead letters still fail.
EXIT_STILL_FAILING = 4
# Still-failing dead letters a replay prints; a count says how many more there were.
SHOWN_FAILURES = 5
# run: a progress line in the log this often (INFO).
PROGRESS_INTERVAL_S = 30.0
ROLE_HELP = (
    "which stages this process runs. all (the default): both, in one process. router: stage 1 "
    "only: reads the Debezium topics and writes a dirty key per changed entity to the dirty "
    "topic (uses the broker and the source database, never Reach or Redis). syncer: stage 2 "
    "only: reads the dirty topic, recomputes each entity from the source database and sends "
    "what changed to Reach (uses the broker, the database, Redis and Reach). Run routers and "
    "syncers as separate processes to scale them apart."
)


def _add_definition(parser: argparse.ArgumentParser) -> None:
    """The definition, as every command takes it: ``FILE`` first, or ``--config FILE``."""
    parser.add_argument(
        "file",
        nargs="?",
        type=Path,
        metavar="FILE",
        help="the sync definition (YAML); or give it with --config",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the sync definition (YAML), as FILE"
    )
    parser.set_defaults(definition_parser=parser)


def _definition_path(args: argparse.Namespace) -> Path:
    """The definition's file, from ``FILE`` or ``--config``; a usage error (exit 2) when there
    is none, or two different ones."""
    parser: argparse.ArgumentParser = args.definition_parser
    positional: Path | None = args.file
    option: Path | None = args.config
    if positional is None:
        if option is None:
            parser.error("which sync definition? give its file: FILE or --config FILE")
        return option
    if option is not None and positional.resolve() != option.resolve():
        parser.error(
            f"two sync definitions given, {positional} and --config {option}: give one "
            "(FILE or --config FILE)"
        )
    return positional


def add_sync_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run reach-sync (both stages, or one with --role)")
    _add_definition(run)
    run.add_argument("--role", choices=("all", "router", "syncer"), default="all", help=ROLE_HELP)
    run.set_defaults(handler=_run)

    validate = sub.add_parser("validate", help="check a sync definition and exit")
    _add_definition(validate)
    validate.set_defaults(handler=_validate)

    plan = sub.add_parser("plan", help="which entities a change to one row makes dirty")
    _add_definition(plan)
    plan.add_argument("--table", required=True, help="schema.table, e.g. public.transactions")
    plan.add_argument("--row", required=True, help="the row as JSON (the after image)")
    plan.add_argument("--op", default="u", choices=("c", "u", "d", "r"))
    plan.add_argument("--before", help="an update's before image as JSON")
    plan.add_argument("--key", default="id", help="the table's key columns, comma-separated")
    plan.set_defaults(handler=_plan)

    preview = sub.add_parser(
        "preview", help="recompute and project one entity, and compare with what was last sent"
    )
    _add_definition(preview)
    preview.add_argument("resource")
    preview.add_argument("id")
    preview.add_argument("--show-pii", action="store_true", help="print PII fields' values")
    preview.set_defaults(handler=_preview)

    _add_dlq_commands(sub)
    _add_audit_commands(sub)
    _add_status_command(sub)


def _failed(command: str, error: SyncError) -> int:
    """Say why ``command`` could not be done; its exit code: EXIT_CONFIG for a configuration
    error (a person must fix something), 1 for anything else (try again)."""
    print(f"{command}: {error}", file=sys.stderr)
    return EXIT_CONFIG if isinstance(error, ConfigurationError) else 1


def _load(path: Path, level: int | None = None) -> SyncDefinition | None:
    """Load the definition; from then on, logs never show any of its secrets. ``level``: the
    log level from then on (default: as it is)."""
    try:
        definition = load_definition(path)
    except DefinitionError as exc:
        print(str(exc), file=sys.stderr)
        return None
    level = logging.getLogger().level if level is None else level
    configure_logging(level, definition_secrets(definition))
    return definition


def _validate(args: argparse.Namespace) -> int:
    path = _definition_path(args)
    definition = _load(path)
    if definition is None:
        return EXIT_CONFIG
    resources = ", ".join(
        f"{name} ({r.reach_schema}, {r.delivery.mode})" for name, r in definition.resources.items()
    )
    tables = ", ".join(sorted(definition.trigger_tables()))
    print(f"{path}: valid. resources: {resources}; triggered by: {tables}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from consumer.observe.telemetry import start_tracing, stop_tracing
    from consumer.service import ServiceStats, install_stop_signals, run_service

    # A service logs what it does at INFO (its partitions, progress, health port); -v: DEBUG.
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    definition = _load(_definition_path(args), level)
    if definition is None:
        return EXIT_CONFIG
    stop = threading.Event()
    install_stop_signals(stop)
    stats = ServiceStats()
    reporter = ProgressLog(stats, args.role, PROGRESS_INTERVAL_S)
    code = 0
    try:
        start_tracing(definition_secrets(definition))  # as OTEL_* say; off by default
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
    definition = _load(_definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    try:
        row = json.loads(args.row)
        before = None if args.before is None else json.loads(args.before)
        entities = plan_command(
            definition, args.table, row, op=args.op, before=before, key_columns=args.key.split(",")
        )
    except (ValueError, KeyError, BadRecord) as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 1
    print(describe_plan(args.table, args.op, entities))
    return 0


def _entity_id(text: str) -> EntityId:
    """Ids arrive from Debezium typed; on the command line an integer-looking id is an int."""
    return int(text) if text.lstrip("-").isdigit() else text


def _masked(definition: SyncDefinition, resource: str, record: dict[str, Any]) -> dict[str, Any]:
    mapping = definition.resources[resource].mapping
    return {
        name: "<pii>"
        if name in mapping and mapping[name].pii != "none" and value is not None
        else value
        for name, value in record.items()
    }


def _preview(args: argparse.Namespace) -> int:
    definition = _load(_definition_path(args))
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
    record = projected.record if show_pii else _masked(definition, name, projected.record)
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


# --- dlq list | replay ---------------------------------------------------------------------------


def _add_dlq_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--resource", help="dead letters of this resource")
    filters.add_argument(
        "--id", dest="entity_id", metavar="ID", help="dead letters of this entity id"
    )
    filters.add_argument("--tenant", help="record dead letters of this Reach tenant")
    filters.add_argument("--kind", choices=KINDS, help="what was dead-lettered")
    filters.add_argument(
        "--error-class", help="the error's class, qualified or short (e.g. DecodeError)"
    )
    filters.add_argument(
        "--since",
        type=_time,
        metavar="TIME",
        help="dead-lettered at or after this ISO-8601 time (UTC if no zone)",
    )
    filters.add_argument(
        "--until", type=_time, metavar="TIME", help="dead-lettered before this ISO-8601 time"
    )
    filters.add_argument(
        "--limit", type=_positive, metavar="N", help="only the N most recent matches"
    )

    dlq = sub.add_parser(
        "dlq",
        help="list or replay the dead-letter topic",
        description="Read the dead-letter topic without joining a consumer group or committing; "
        "replay makes the entities dirty again so that they are recomputed from the database. "
        "Nothing is ever removed from the topic.",
        epilog="exit codes: 0 done; 1 broker unavailable, or produce not acknowledged; 2 bad "
        "definition or no such dead-letter topic; 3 the filter matched nothing; 4 (replay) some "
        "selected dead letters still fail, the rest were re-enqueued",
    )
    commands = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = commands.add_parser("list", parents=[filters], help="list dead letters, oldest first")
    _add_definition(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    listing.set_defaults(handler=_dlq_list)
    replay = commands.add_parser(
        "replay",
        parents=[filters],
        help="make the dead letters' entities dirty again, so they are recomputed fresh",
    )
    _add_definition(replay)
    replay.add_argument(
        "--dry-run", action="store_true", help="say what would be re-enqueued, produce nothing"
    )
    replay.set_defaults(handler=_dlq_replay)


def _time(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _dlq_filter(args: argparse.Namespace) -> Filter:
    return Filter(
        resource=args.resource,
        entity_id=args.entity_id,
        tenant=args.tenant,
        kind=args.kind,
        error_class=args.error_class,
        since_ms=args.since,
        until_ms=args.until,
        limit=args.limit,
    )


def _dlq_read(
    args: argparse.Namespace, command: str
) -> tuple[SyncDefinition, DeadLetterRead] | int:
    """The definition and the selected dead letters, or the exit code when there are none."""
    definition = _load(_definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    chosen = _dlq_filter(args)
    try:
        read = read_dead_letters(definition, chosen)
    except SyncError as exc:
        return _failed(f"dlq {command}", exc)
    if read.entries:
        return definition, read
    if chosen.active():
        print(
            f"dlq {command}: no dead letter in {read.topic} matches {chosen.describe()} "
            f"({_count(read.total, 'dead letter')} in the topic)",
            file=sys.stderr,
        )
        return EXIT_NO_MATCH
    nothing = f"{read.topic} holds no dead letters"
    print(nothing if command == "list" else f"{nothing}: nothing to replay", file=sys.stderr)
    return 0


def _dlq_list(args: argparse.Namespace) -> int:
    result = _dlq_read(args, "list")
    if isinstance(result, int):
        return result
    _, read = result
    if args.json:
        for entry in read.entries:
            print(orjson.dumps(entry_json(entry)).decode())
        return 0
    for line in table_lines(read.entries):
        print(line)
    shown = len(read.entries)
    limited = (
        f", the {shown} most recent of {read.matched} matching" if read.matched > shown else ""
    )
    total = _count(read.total, "dead letter")
    print(f"{shown} of {total} in {read.topic}{limited}; oldest first")
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    result = _dlq_read(args, "replay")
    if isinstance(result, int):
        return result
    definition, read = result
    now_ms = int(time.time() * 1000)
    try:
        plan = plan_replay(read.entries, definition, now_ms)
        if plan.keys and not args.dry_run:
            ensure_topics(definition)  # as `run` would: the dirty topic with its partitions
            progress = Progress("dlq replay: re-enqueued", len(plan.keys), "entities")
            try:
                progress.finish(enqueue(plan.keys.values(), definition, progress.update))
            finally:
                progress.finish()  # ends a redrawn line before an error is printed
    except SyncError as exc:
        return _failed("dlq replay", exc)
    for line in _replay_report(read, plan, definition.topics.dirty, args.dry_run):
        print(line)
    return EXIT_STILL_FAILING if plan.failures else 0


def _replay_report(read: DeadLetterRead, plan: ReplayPlan, dirty: str, dry_run: bool) -> list[str]:
    kinds = Counter(entry.kind for entry in read.entries)
    selected = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    per_resource = ", ".join(f"{r} {n}" for r, n in sorted(plan.per_resource().items()))
    done = "would re-enqueue" if dry_run else "re-enqueued"
    lines = [
        f"{_count(len(read.entries), 'dead letter')} selected in {read.topic} ({selected})",
        f"{done} {_count(len(plan.keys), 'dirty key')} to {dirty}"
        + (f": {per_resource}" if per_resource else ""),
    ]
    if plan.ignored:
        ignored = ", ".join(f"{reason} {n}" for reason, n in sorted(plan.ignored.items()))
        events = _count(sum(plan.ignored.values()), "event")
        lines.append(f"{events} made nothing dirty ({ignored})")
    if plan.failures:
        failed = _count(len(plan.failures), "dead letter")
        lines.append(f"{failed} still failing, not replayed:")
        for entry, reason in plan.failures[:SHOWN_FAILURES]:
            lines.append(f"  {entry.at.partition}:{entry.at.offset} {entry.kind}: {reason}")
        if len(plan.failures) > SHOWN_FAILURES:
            lines.append(f"  ... and {len(plan.failures) - SHOWN_FAILURES} more")
    lines.append(
        f"nothing was removed from {read.topic} (it is a log); replaying again is harmless"
    )
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- audit why -----------------------------------------------------------------------------------


def _add_audit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = sub.add_parser(
        "audit",
        help="read the audit topic: what was sent to Reach, when and why",
        description="Read the audit topic without joining a consumer group or committing.",
    )
    commands = audit.add_subparsers(dest="audit_command", required=True)
    why = commands.add_parser(
        "why",
        help="the history of what was sent for one entity and why, newest first",
        description="Every record Reach accepted and every delete for one entity, newest first: "
        "when, tenant, batch, payload hash, fields sent and the triggers that caused it. "
        "Recomputes skipped as unchanged were not sent and are not listed.",
        epilog="exit codes: 0 done; 1 broker unavailable; 2 bad definition or no such audit "
        "topic; 3 nothing audited for this entity (and filters)",
    )
    _add_definition(why)
    why.add_argument("resource", help="a resource of the definition, e.g. customers")
    why.add_argument("entity_id", metavar="ID", help="the entity's id (its external id in Reach)")
    why.add_argument("--tenant", help="only what went to this Reach tenant")
    why.add_argument(
        "--since",
        type=_time,
        metavar="TIME",
        help="accepted at or after this ISO-8601 time (UTC if no zone)",
    )
    why.add_argument("--limit", type=_positive, metavar="N", help="only the N most recent")
    why.add_argument("--json", action="store_true", help="one JSON object a line, with values")
    why.add_argument(
        "--all-partitions",
        action="store_true",
        help="read every partition, not only the entity's (after the partition count changed)",
    )
    why.set_defaults(handler=_audit_why)


def _audit_why(args: argparse.Namespace) -> int:
    definition = _load(_definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    query = Query(
        resource=args.resource,
        entity_id=args.entity_id,
        tenant=args.tenant,
        since_ms=args.since,
        limit=args.limit,
        all_partitions=args.all_partitions,
    )
    try:
        history = read_history(definition, query)
    except SyncError as exc:
        return _failed("audit why", exc)
    if history.undecodable:
        print(
            f"audit why: {_count(history.undecodable, 'record')} of this entity did not decode "
            "(written by another version?) and are not shown",
            file=sys.stderr,
        )
    if not history.entries:
        unknown = (
            ""
            if args.resource in definition.resources
            else f"; the definition has no resource {args.resource!r}"
        )
        print(
            f"audit why: nothing was audited for {query.describe()} in {history.topic} "
            f"({_count(history.scanned, 'record')} read from {history.where()}){unknown}",
            file=sys.stderr,
        )
        return EXIT_NO_MATCH
    if args.json:
        for entry in history.entries:
            print(orjson.dumps(audit_entry_json(entry)).decode())
        return 0
    for line in history_lines(history.entries):
        print(line)
    shown = len(history.entries)
    limited = f", the {shown} most recent of {history.matched}" if history.matched > shown else ""
    print(
        f"{_count(shown, 'record')} for {args.resource}/{args.entity_id} in {history.topic} "
        f"({history.where()}){limited}; newest first; unchanged recomputes are not sent and "
        "not audited"
    )
    return 0


# --- status --------------------------------------------------------------------------------------


def _add_status_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status",
        help="a one-screen summary of a running deployment: readiness, lag, rates, dead letters",
        description="Ask the service's /readyz, and read from Kafka both consumer groups' "
        "committed offsets against the high watermarks (without joining the groups or "
        "committing) and the dead-letter topic's size. Rates come from two samples of the "
        "committed offsets.",
        epilog="exit codes: 0 done, whatever the service's state (no answer from its health port "
        "included); 1 broker unavailable; 2 bad definition or a topic does not exist",
    )
    _add_definition(status)
    status.add_argument(
        "--watch",
        type=_seconds,
        nargs="?",
        const=DEFAULT_INTERVAL_S,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_INTERVAL_S:g}) until Ctrl-C",
    )
    status.add_argument(
        "--interval",
        type=_seconds,
        default=DEFAULT_INTERVAL_S,
        metavar="SECONDS",
        help=f"seconds between the two samples rates come from (default {DEFAULT_INTERVAL_S:g})",
    )
    status.add_argument(
        "--health-url",
        action="append",
        metavar="URL",
        help="a process's /readyz (URL or host:port; repeat for each process of a group); "
        "default: the definition's health section",
    )
    status.set_defaults(handler=_status)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0.1 to 3600")
    return value


def _status(args: argparse.Namespace) -> int:
    path = _definition_path(args)
    definition = _load(path)
    if definition is None:
        return EXIT_CONFIG
    urls = [readyz_url(u) for u in args.health_url] if args.health_url else health_urls(definition)
    try:
        with StatusReader(definition) as reader:
            if args.watch is None:
                print("\n".join(render(gather(reader, path.name, urls, args.interval))))
                return 0
            return _watch(reader, path.name, urls, args.watch)
    except SyncError as exc:
        return _failed("status", exc)


def _watch(reader: StatusReader, name: str, urls: list[str] | str, every_s: float) -> int:
    """Redraw the report every ``every_s`` (rates over the time between refreshes) until Ctrl-C.
    A broker that stops answering is shown and retried; a missing topic ends it (exit 2)."""
    tty = sys.stdout.isatty()
    earlier: Sample | None = None
    try:
        while True:
            try:
                report = gather(reader, name, urls, every_s, earlier)
            except Retryable as exc:
                lines, earlier = [f"status: {exc}; retrying in {every_s:g} s"], None
            else:
                lines, earlier = render(report), report.now
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")  # redraw from the top of a cleared screen
            print("\n".join(lines) + ("" if tty else "\n"), flush=True)
            time.sleep(every_s)
    except KeyboardInterrupt:
        return 0
