"""``reach-sync export`` and ``sample``: records as Reach would receive them, out of band.

``export`` writes CSV files for Reach's one-time CSV import (consumer/export/csv_export.py);
``sample`` prints a few records for Reach to build its schemas from, PII masked unless
``--show-pii``. Both read through the syncer's recompute and projection, so neither can show
Reach anything the API path would not send. Progress goes to stderr, the report or the records
to stdout. Exit codes: 0 done; 1 a file that cannot be written or the database unavailable
(nothing is left of the export); 2 a configuration error (an unknown resource or tenant, a
query the database rejects).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

from consumer.backfill.scope import BackfillScope
from consumer.cli.common import (
    EXIT_CONFIG,
    add_definition,
    count,
    definition_path,
    failed,
    load,
    positive,
)
from consumer.cli.masking import masked
from consumer.cli.progress import Progress
from consumer.errors import SyncError
from consumer.export.csv_export import ExportReport, export_csv
from consumer.export.stream import PAGE_SIZE, first_records, unknown

__all__ = ["add_export_commands"]

EXPORT_HELP = "write every record of a resource as CSV, a file per tenant, for Reach's CSV import"
SAMPLE_HELP = "print the first N records of a resource as Reach receives them (JSON lines)"


def add_export_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser("export", help=EXPORT_HELP)
    add_definition(export)
    export.add_argument("--resource", action="append", required=True, help="a resource (repeat)")
    export.add_argument(
        "--tenant", action="append", default=[], help="only this tenant (repeat; default: all)"
    )
    export.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="a new or empty directory (default: reach-sync-export-<UTC time>)",
    )
    export.add_argument("--gzip", action="store_true", help="write .csv.gz files")
    export.add_argument(
        "--page-size", type=positive, default=PAGE_SIZE, help=f"ids per page ({PAGE_SIZE})"
    )
    export.set_defaults(handler=_export)

    sample = sub.add_parser("sample", help=SAMPLE_HELP)
    add_definition(sample)
    sample.add_argument("--resource", required=True, help="the resource")
    sample.add_argument("--count", type=positive, required=True, help="how many records")
    sample.add_argument(
        "--tenant", action="append", default=[], help="only this tenant (repeat; default: all)"
    )
    sample.add_argument("--show-pii", action="store_true", help="print PII fields' values")
    sample.set_defaults(handler=_sample)


class _Walks:
    """One progress line per resource, on stderr."""

    def __init__(self) -> None:
        self._resource: str | None = None
        self._progress: Progress | None = None

    def walked(self, resource: str, done: int, total: int | None) -> None:
        if resource != self._resource or self._progress is None:
            self.finish()
            self._resource = resource
            self._progress = Progress(f"export {resource}", total, "ids")
        self._progress.update(done)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.finish()
            self._progress = None


def _export(args: argparse.Namespace) -> int:
    definition = load(definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    out: Path = args.out or Path(f"reach-sync-export-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    walks = _Walks()
    try:
        report = asyncio.run(
            export_csv(
                definition,
                out,
                resources=args.resource,
                tenants=args.tenant,
                gzipped=args.gzip,
                page_size=args.page_size,
                watch=walks.walked,
            )
        )
    except SyncError as exc:
        return failed("export", exc)
    finally:
        walks.finish()
    _report(report)
    return 0


def _report(report: ExportReport) -> None:
    for done in report.resources:
        print(
            f"{done.resource} ({done.reach_schema}): {count(done.rows, 'row')} in "
            f"{count(len(done.files), 'file')} under {report.out / done.resource}"
        )
        if done.rejected:
            print(
                f"  {count(done.rejected, 'row')} rejected, not exported (they cannot be read or "
                f"projected; ids and reasons in {done.rejected_path})"
            )
    print(f"manifest: {report.manifest}")


def _sample(args: argparse.Namespace) -> int:
    definition = load(definition_path(args))
    if definition is None:
        return EXIT_CONFIG
    name: str = args.resource
    try:
        scope = BackfillScope.of(definition, "backfill", (name,), tuple(args.tenant))
        records, rejected = asyncio.run(
            first_records(definition, name, args.count, tenants=scope.tenants)
        )
        if len(records) < args.count:  # the walk went to the end: every tenant was seen
            unknown(definition, name, scope.tenants, {r.tenant for r in records})
    except SyncError as exc:
        return failed("sample", exc)
    for projected in records:
        record = projected.record if args.show_pii else masked(definition, name, projected.record)
        print(orjson.dumps(record).decode())
    if rejected:
        print(
            f"sample: {count(rejected, 'row')} skipped: they cannot be read or projected "
            "(reach-sync preview RESOURCE ID tells why)",
            file=sys.stderr,
        )
    if len(records) < args.count:
        print(f"sample: {name} has only {count(len(records), 'record')}", file=sys.stderr)
    return 0
