"""``reach-sync run | validate | plan | preview``: the sync definition at work.

Every command loads the definition the same way and reports a bad one the same way: one line
per problem, naming the file, the field and the reason, and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import orjson

from consumer.config import ConfigError, SyncDefinition, load_definition
from consumer.dedup import LastSentStore
from consumer.dirty import EntityId
from consumer.errors import BadRecord, ConfigurationError, SyncError
from consumer.kafka import abandoned_consumers
from consumer.plan import describe_plan, plan_command
from consumer.projection import project
from consumer.recompute import SourceDatabase

__all__ = ["add_sync_commands"]

log = logging.getLogger(__name__)

EXIT_CONFIG = 2


def add_sync_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run reach-sync (both stages, or one with --role)")
    run.add_argument("--config", type=Path, required=True, help="the sync definition (YAML)")
    run.add_argument("--role", choices=("all", "router", "syncer"), default="all")
    run.set_defaults(handler=_run)

    validate = sub.add_parser("validate", help="check a sync definition and exit")
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=_validate)

    plan = sub.add_parser("plan", help="which entities a change to one row makes dirty")
    plan.add_argument("file", type=Path)
    plan.add_argument("--table", required=True, help="schema.table, e.g. public.transactions")
    plan.add_argument("--row", required=True, help="the row as JSON (the after image)")
    plan.add_argument("--op", default="u", choices=("c", "u", "d", "r"))
    plan.add_argument("--before", help="an update's before image as JSON")
    plan.add_argument("--key", default="id", help="the table's key columns, comma-separated")
    plan.set_defaults(handler=_plan)

    preview = sub.add_parser(
        "preview", help="recompute and project one entity, and compare with what was last sent"
    )
    preview.add_argument("file", type=Path)
    preview.add_argument("resource")
    preview.add_argument("id")
    preview.add_argument("--show-pii", action="store_true", help="print PII fields' values")
    preview.set_defaults(handler=_preview)


def _load(path: Path) -> SyncDefinition | None:
    try:
        return load_definition(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


def _validate(args: argparse.Namespace) -> int:
    definition = _load(args.file)
    if definition is None:
        return EXIT_CONFIG
    resources = ", ".join(
        f"{name} ({r.reach_schema}, {r.delivery.mode})" for name, r in definition.resources.items()
    )
    tables = ", ".join(sorted(definition.trigger_tables()))
    print(f"{args.file}: valid. resources: {resources}; triggered by: {tables}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from consumer.service import install_stop_signals, run_service

    definition = _load(args.config)
    if definition is None:
        return EXIT_CONFIG
    stop = threading.Event()
    install_stop_signals(stop)
    code = 0
    try:
        stats = run_service(definition, stop, role=args.role)
    except ConfigurationError as exc:
        print(f"reach-sync: configuration error: {exc}", file=sys.stderr)
        code = EXIT_CONFIG
    else:
        if stats.router_error is not None:
            code = EXIT_CONFIG if isinstance(stats.router_error, ConfigurationError) else 1
            print(f"reach-sync: the router stopped: {stats.router_error}", file=sys.stderr)
        counts = {k: v for k, v in vars(stats.syncer).items() if k != "latencies_ms"}
        print(json.dumps({"syncer": counts}), file=sys.stderr)
    if abandoned_consumers():
        # Consumers released without a LeaveGroup (the local broker; see release_consumer) must
        # not get one from a destructor on the way out.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _plan(args: argparse.Namespace) -> int:
    definition = _load(args.file)
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
    definition = _load(args.file)
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
