"""``reach-sync status``: readiness, lag, rates, scheduled runs and dead letters of a running
reach-sync, once or watched (status_report.py reads, status_view.py renders)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from consumer.cli.common import (
    EXIT_CONFIG,
    add_definition,
    definition_path,
    failed,
    load,
    seconds,
)
from consumer.errors import Retryable, SyncError

if TYPE_CHECKING:
    from consumer.cli.status_report import Sample, StatusReader

__all__ = ["add_status_command"]

# Between the two samples rates come from, and between --watch refreshes.
DEFAULT_INTERVAL_S = 2.0


# --- status --------------------------------------------------------------------------------------


def add_status_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status",
        help="a one-screen summary of a running deployment: readiness, lag, rates, scheduled "
        "runs, dead letters",
        description="Ask the service's /readyz, and read from Kafka both consumer groups' "
        "committed offsets against the high watermarks (without joining the groups or "
        "committing) and the dead-letter topic's size. Rates come from two samples of the "
        "committed offsets. Each scheduled resource: its last run and next tick (the run record "
        "in Redis) and the dirty keys waiting on the scheduled topic past its group's commits.",
        epilog="exit codes: 0 done, whatever the service's state (no answer from its health port "
        "included); 1 broker unavailable; 2 bad definition or a topic does not exist",
    )
    add_definition(status)
    status.add_argument(
        "--watch",
        type=seconds,
        nargs="?",
        const=DEFAULT_INTERVAL_S,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_INTERVAL_S:g}) until Ctrl-C",
    )
    status.add_argument(
        "--interval",
        type=seconds,
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


def _status(args: argparse.Namespace) -> int:
    # Imported when the command runs, not when the parser is built: status_report brings httpx
    # and the scheduler (its window sink, the Reach client), which `run --role router` never uses.
    from consumer.cli.status_report import StatusReader, gather, health_urls, readyz_url
    from consumer.cli.status_view import render

    path = definition_path(args)
    definition = load(path)
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
        return failed("status", exc)


def _watch(reader: StatusReader, name: str, urls: list[str] | str, every_s: float) -> int:
    """Redraw the report every ``every_s`` (rates over the time between refreshes) until Ctrl-C.
    A broker that stops answering is shown and retried; a missing topic ends it (exit 2)."""
    from consumer.cli.status_report import gather  # as in _status
    from consumer.cli.status_view import render

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
