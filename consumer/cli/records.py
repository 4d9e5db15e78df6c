"""``reach-sync dlq list | replay`` and ``reach-sync audit why``: the dead-letter and audit topics,
read without joining a group (records/dlq_read.py, records/audit_read.py)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import orjson

from consumer.cli.common import (
    EXIT_CONFIG,
    EXIT_NO_MATCH,
    add_definition,
    count,
    definition_path,
    failed,
    load,
    positive,
    time_arg,
)
from consumer.cli.progress import Progress
from consumer.config import SyncDefinition
from consumer.errors import SyncError
from consumer.records.audit_read import Query, history_lines, read_history
from consumer.records.audit_read import entry_json as audit_entry_json
from consumer.records.dlq_read import (
    KINDS,
    DeadLetterRead,
    Filter,
    entry_json,
    read_dead_letters,
    table_lines,
)
from consumer.records.dlq_replay import ReplayPlan, enqueue, plan_replay
from consumer.router.lookups import LookupDatabase, lookup_triggers
from consumer.router.topics import ensure_topics

__all__ = ["add_audit_commands", "add_dlq_commands"]

# dlq replay: what could be replayed was re-enqueued, but some selected dead letters still fail.
EXIT_STILL_FAILING = 4
# Still-failing dead letters a replay prints; a count says how many more there were.
SHOWN_FAILURES = 5


# --- dlq list | replay ---------------------------------------------------------------------------


def add_dlq_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        type=time_arg,
        metavar="TIME",
        help="dead-lettered at or after this ISO-8601 time (UTC if no zone)",
    )
    filters.add_argument(
        "--until", type=time_arg, metavar="TIME", help="dead-lettered before this ISO-8601 time"
    )
    filters.add_argument(
        "--limit", type=positive, metavar="N", help="only the N most recent matches"
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
    add_definition(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    listing.set_defaults(handler=_dlq_list)
    replay = commands.add_parser(
        "replay",
        parents=[filters],
        help="make the dead letters' entities dirty again, so they are recomputed fresh",
    )
    add_definition(replay)
    replay.add_argument(
        "--dry-run", action="store_true", help="say what would be re-enqueued, produce nothing"
    )
    replay.set_defaults(handler=_dlq_replay)


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
    definition = load(definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    chosen = _dlq_filter(args)
    try:
        read = read_dead_letters(definition, chosen)
    except SyncError as exc:
        return failed(f"dlq {command}", exc)
    if read.entries:
        return definition, read
    if chosen.active():
        print(
            f"dlq {command}: no dead letter in {read.topic} matches {chosen.describe()} "
            f"({count(read.total, 'dead letter')} in the topic)",
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
    total = count(read.total, "dead letter")
    print(f"{shown} of {total} in {read.topic}{limited}; oldest first")
    return 0


def _dlq_replay(args: argparse.Namespace) -> int:
    result = _dlq_read(args, "replay")
    if isinstance(result, int):
        return result
    definition, read = result
    now_ms = int(time.time() * 1000)
    try:
        lookups = (
            LookupDatabase(definition.source.database) if lookup_triggers(definition) else None
        )
        try:
            look_up = None if lookups is None else lookups.look_up
            plan = plan_replay(read.entries, definition, now_ms, look_up)
        finally:
            if lookups is not None:
                lookups.close()
        if plan.keys and not args.dry_run:
            ensure_topics(definition)  # as `run` would: the dirty topic with its partitions
            progress = Progress("dlq replay: re-enqueued", len(plan.keys), "entities")
            try:
                progress.finish(enqueue(plan.keys.values(), definition, progress.update))
            finally:
                progress.finish()  # ends a redrawn line before an error is printed
    except SyncError as exc:
        return failed("dlq replay", exc)
    for line in _replay_report(read, plan, definition.topics.dirty, args.dry_run):
        print(line)
    return EXIT_STILL_FAILING if plan.failures else 0


def _replay_report(read: DeadLetterRead, plan: ReplayPlan, dirty: str, dry_run: bool) -> list[str]:
    kinds = Counter(entry.kind for entry in read.entries)
    selected = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    per_resource = ", ".join(f"{r} {n}" for r, n in sorted(plan.per_resource().items()))
    done = "would re-enqueue" if dry_run else "re-enqueued"
    lines = [
        f"{count(len(read.entries), 'dead letter')} selected in {read.topic} ({selected})",
        f"{done} {count(len(plan.keys), 'dirty key')} to {dirty}"
        + (f": {per_resource}" if per_resource else ""),
    ]
    if plan.ignored:
        ignored = ", ".join(f"{reason} {n}" for reason, n in sorted(plan.ignored.items()))
        events = count(sum(plan.ignored.values()), "event")
        lines.append(f"{events} made nothing dirty ({ignored})")
    if plan.failures:
        failed = count(len(plan.failures), "dead letter")
        lines.append(f"{failed} still failing, not replayed:")
        for entry, reason in plan.failures[:SHOWN_FAILURES]:
            lines.append(f"  {entry.at.partition}:{entry.at.offset} {entry.kind}: {reason}")
        if len(plan.failures) > SHOWN_FAILURES:
            lines.append(f"  ... and {len(plan.failures) - SHOWN_FAILURES} more")
    lines.append(
        f"nothing was removed from {read.topic} (it is a log); replaying again is harmless"
    )
    return lines


# --- audit why -----------------------------------------------------------------------------------


def add_audit_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "Each send is shown once, with when it was announced (its write-ahead sending record); "
        "a send that left and whose outcome no record gives (the process ended before the "
        "answer) is shown as outcome sending. Recomputes skipped as unchanged were not sent "
        "and are not listed.",
        epilog="exit codes: 0 done; 1 broker unavailable; 2 bad definition or no such audit "
        "topic; 3 nothing audited for this entity (and filters)",
    )
    add_definition(why)
    why.add_argument("resource", help="a resource of the definition, e.g. customers")
    why.add_argument("entity_id", metavar="ID", help="the entity's id (its external id in Reach)")
    why.add_argument("--tenant", help="only what went to this Reach tenant")
    why.add_argument(
        "--since",
        type=time_arg,
        metavar="TIME",
        help="accepted at or after this ISO-8601 time (UTC if no zone)",
    )
    why.add_argument("--limit", type=positive, metavar="N", help="only the N most recent")
    why.add_argument("--json", action="store_true", help="one JSON object a line, with values")
    why.add_argument(
        "--all-partitions",
        action="store_true",
        help="read every partition, not only the entity's (after the partition count changed)",
    )
    why.set_defaults(handler=_audit_why)


def _audit_why(args: argparse.Namespace) -> int:
    definition = load(definition_path(args))
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
        return failed("audit why", exc)
    if history.undecodable:
        print(
            f"audit why: {count(history.undecodable, 'record')} of this entity did not decode "
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
            f"({count(history.scanned, 'record')} read from {history.where()}){unknown}",
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
        f"{count(shown, 'record')} for {args.resource}/{args.entity_id} in {history.topic} "
        f"({history.where()}){limited}; newest first; unchanged recomputes are not sent and "
        "not audited"
    )
    return 0
