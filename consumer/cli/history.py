"""``reach-sync backfill`` and ``reach-sync resync``: history into Reach, through the syncer.

Both only make entities dirty (consumer/backfill/); the running ``reach-sync run`` sends them.
Progress goes to stderr (and ``/metrics`` with ``--metrics-port``); the report to stdout.
Exit codes: 0 done; 1 stopped or failed for a reason that may pass (run it again: it
resumes); 2 a configuration error (a name, ``--where``, a tenant Reach does not have).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from consumer.backfill.checkpoint import CheckpointStore
from consumer.backfill.dry_run import dry_run
from consumer.backfill.emit import DirtyWriter
from consumer.backfill.fingerprint import Change, FingerprintStore, parts_of
from consumer.backfill.resync import Resyncer
from consumer.backfill.run import (
    DEFAULT_MAX_LAG,
    BackfillOptions,
    BackfillReport,
    Parts,
    run_backfill,
)
from consumer.backfill.scope import BackfillScope
from consumer.backfill.syncer_position import SyncerPosition
from consumer.cli.common import (
    EXIT_CONFIG,
    add_definition,
    definition_path,
    failed,
    load,
    positive,
    time_arg,
)
from consumer.cli.progress import progress_line
from consumer.config import SyncDefinition
from consumer.errors import ConfigurationError, SyncError
from consumer.observe.backfill_metrics import BackfillMetrics
from consumer.service import install_stop_signals
from consumer.sink.dedup import LastSentStore

__all__ = ["add_history_commands"]

BACKFILL_HELP = (
    "make every entity of the chosen resources and tenants dirty, for the running syncer to send"
)


def add_history_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backfill = sub.add_parser("backfill", help=BACKFILL_HELP)
    add_definition(backfill)
    backfill.add_argument(
        "--resource", action="append", default=[], help="a resource (repeat; default: all)"
    )
    backfill.add_argument(
        "--tenant", action="append", default=[], help="only this tenant's entities (repeat)"
    )
    backfill.add_argument(
        "--where", help="only entities whose row of the resource query matches this SQL (q.col)"
    )
    backfill.add_argument(
        "--since",
        type=time_arg,
        help="only entities whose backfill.since_column is at or after this time",
    )
    backfill.add_argument(
        "--mark-complete",
        action="store_true",
        help="once every entity has an outcome, set the tenants' dataIntegrationCompletedAt",
    )
    backfill.add_argument(
        "--dry-run", action="store_true", help="count per resource and tenant; write nothing"
    )
    _walk_options(backfill)
    backfill.set_defaults(handler=_backfill)

    resync = sub.add_parser(
        "resync", help="re-send what the definition now projects differently (a backfill)"
    )
    add_definition(resync)
    resync.add_argument("--resource", action="append", required=True, help="a resource (repeat)")
    _walk_options(resync)
    resync.set_defaults(handler=_resync)


def _walk_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--restart", action="store_true", help="start over, even if a checkpoint says done"
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="end once every key is written, not sent"
    )
    parser.add_argument("--page-size", type=positive, default=500, help="ids per page (500)")
    parser.add_argument(
        "--max-lag",
        type=positive,
        default=DEFAULT_MAX_LAG,
        help=f"pause while more dirty keys than this wait for the syncer ({DEFAULT_MAX_LAG})",
    )
    parser.add_argument("--rate", type=_rate, help="dirty keys per second at most")
    parser.add_argument("--metrics-port", type=_port, help="serve /metrics on 127.0.0.1:PORT")


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate from 0 to 1,000,000 keys/s")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65_535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 1 to 65535")
    return int(text)


def _options(args: argparse.Namespace) -> BackfillOptions:
    return BackfillOptions(
        page_size=args.page_size,
        max_lag=args.max_lag,
        rate=args.rate,
        restart=args.restart,
        wait=not args.no_wait or bool(getattr(args, "mark_complete", False)),
    )


class _Watch:
    """Progress on stderr (one line redrawn on a terminal, a line every few seconds
    elsewhere) and in the metrics."""

    def __init__(self, metrics: BackfillMetrics, tty: bool) -> None:
        self._metrics = metrics
        self._tty = tty
        self._started = time.monotonic()
        self._next = 0.0
        self._walking = ""  # the last walking line, which a wait for the syncer extends
        self._shown = False

    def walking(self, resource: str, walked: int, total: int | None, keys: int) -> None:
        self._metrics.walking(resource, walked, total, keys)
        elapsed = time.monotonic() - self._started
        self._walking = progress_line(f"backfill {resource}", walked, total, elapsed, "ids")
        self._say(self._walking)

    def lag(self, keys: int, waiting: bool) -> None:
        self._metrics.lag(keys, waiting)
        if waiting:
            self._say(f"{self._walking}  (waiting: syncer lag {keys:,})")

    def awaiting(self, partitions_behind: int, partitions: int) -> None:
        self._metrics.awaiting(partitions_behind, partitions)
        self._say(f"waiting for outcomes: {partitions_behind} of {partitions} partitions to go")

    def _say(self, line: str) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + (0.25 if self._tty else 5.0)
        self._shown = True
        if self._tty:
            sys.stderr.write(f"\r{line}\x1b[K")
        else:
            sys.stderr.write(f"{line}\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self._shown and self._tty:
            sys.stderr.write("\n")


@dataclass(frozen=True, slots=True)
class _Session:
    """What one command's walks work with, opened once and closed once."""

    redis: Redis
    writer: DirtyWriter
    position: SyncerPosition
    stop: threading.Event
    watch: _Watch

    def parts(self, prefix: str) -> Parts:
        return Parts(CheckpointStore(self.redis, prefix), self.writer, self.position)


def _session(
    definition: SyncDefinition,
    args: argparse.Namespace,
    body: Callable[[_Session], Awaitable[list[BackfillReport]]],
) -> list[BackfillReport]:
    stop = threading.Event()
    install_stop_signals(stop)
    metrics = BackfillMetrics()
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port)
    watch = _Watch(metrics, sys.stderr.isatty())

    async def main() -> list[BackfillReport]:
        redis: Redis = Redis.from_url(definition.redis.url.get_secret_value())
        writer = DirtyWriter(definition)
        position = SyncerPosition(definition)
        try:
            return await body(_Session(redis, writer, position, stop, watch))
        finally:
            watch.done()
            await asyncio.to_thread(writer.close)
            position.close()
            await redis.aclose()

    return asyncio.run(main())


def _backfill(args: argparse.Namespace) -> int:
    definition = load(definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    if args.mark_complete and not args.tenant:
        print("backfill: --mark-complete needs --tenant", file=sys.stderr)
        return EXIT_CONFIG
    try:
        scope = BackfillScope.of(
            definition, "backfill", tuple(args.resource), tuple(args.tenant), args.where, args.since
        )
        if scope.tenants:
            asyncio.run(_tenants_exist(definition, scope.tenants))
        if args.dry_run:
            result = asyncio.run(dry_run(definition, scope, args.page_size))
            print(f"dry run of {scope.describe()}:")
            print("\n".join(result.lines()) or "nothing in scope")
            return 0

        async def walk(session: _Session) -> list[BackfillReport]:
            parts = session.parts(definition.redis.key_prefix)
            options = _options(args)
            return [
                await run_backfill(definition, scope, parts, options, session.stop, session.watch)
            ]

        (report,) = _session(definition, args, walk)
        code = _report(report)
        if code == 0 and args.mark_complete:
            dead = 0 if report.outcomes is None else report.outcomes.dead_lettered
            if dead:
                print(
                    f"not marked complete: {dead} entities were dead-lettered; fix and replay "
                    "them (reach-sync dlq), then run this command again",
                    file=sys.stderr,
                )
                return 1
            asyncio.run(_mark_complete(definition, scope.tenants))
    except SyncError as exc:
        return failed("backfill", exc)
    return code


def _resync(args: argparse.Namespace) -> int:
    definition = load(definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    unknown = [r for r in args.resource if r not in definition.resources]
    if unknown:
        return failed("resync", ConfigurationError(f"no resource {', '.join(unknown)}"))
    names = list(dict.fromkeys(args.resource))

    async def walk(session: _Session) -> list[BackfillReport]:
        last_sent = LastSentStore(
            definition.redis.url.get_secret_value(), definition.redis.key_prefix
        )
        resyncer = Resyncer(definition, session.redis, last_sent, session.writer, session.position)
        fingerprints = FingerprintStore(session.redis, definition.redis.key_prefix)
        reports = []
        try:
            held = await fingerprints.held(names)
            for name in names:
                current = parts_of(definition.resources[name])
                before = held[name] or {}
                changed = tuple(p for p in current if before.get(p) != current[p])
                change = Change(name, changed or ("nothing: by hand",), current)
                report = await resyncer.resync(change, session.stop, _options(args), session.watch)
                if report is None:
                    raise ConfigurationError(f"another process is re-syncing {name} now")
                reports.append(report)
                if report.stopped:
                    break
        finally:
            await last_sent.close()
        return reports

    try:
        reports = _session(definition, args, walk)
    except SyncError as exc:
        return failed("resync", exc)
    codes = [_report(r) for r in reports]
    return max(codes, default=0)


def _report(report: BackfillReport) -> int:
    """Print what the run did; 1 when it was stopped before the end."""
    checkpoint = report.checkpoint
    per_resource = ", ".join(
        f"{name} {state.keys:,} keys{'' if state.done else ' (not finished)'}"
        for name, state in checkpoint.resources.items()
    )
    print(f"{report.scope.describe()} [checkpoint {report.scope.id}, run {report.run}]")
    if report.already_complete:
        when = datetime.fromtimestamp((checkpoint.completed_ms or 0) / 1000, UTC)
        print(
            f"already complete since {when:%Y-%m-%d %H:%M:%S} UTC ({per_resource}); "
            "--restart starts over"
        )
    else:
        print(f"dirty keys made: {per_resource}; {report.written:,} by this run")
    if report.stopped:
        print("stopped: run the same command again to resume from the checkpoint")
        return 1
    if report.outcomes is not None:
        print(f"outcomes: {report.outcomes.describe()}")
    return 0


async def _tenants_exist(definition: SyncDefinition, tenants: tuple[str, ...]) -> None:
    # The Reach client (httpx, aiohttp) is imported when asked for, not with the CLI's parser:
    # `run --role router` never uses it.
    from consumer.reach.client import ReachClient

    async with ReachClient(definition.destination) as client:
        missing = [t for t in tenants if await client.find_tenant(t) is None]
    if missing:
        raise ConfigurationError(f"Reach has no tenant {', '.join(missing)}")


async def _mark_complete(definition: SyncDefinition, tenants: tuple[str, ...]) -> None:
    from consumer.reach.client import ReachClient  # as in _tenants_exist

    now = datetime.now(UTC)
    async with ReachClient(definition.destination) as client:
        for tenant in tenants:
            marked = await client.mark_data_integration_complete(tenant, now)
            at = marked.data_integration_completed_at
            print(f"tenant {tenant}: dataIntegrationCompletedAt {at}")
