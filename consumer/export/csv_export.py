"""``reach-sync export``: a resource's records as CSV files, for Reach's one-time CSV import.

The rows are exactly the records the API path sends (stream.py: the same walk, recompute,
projection and PII policy), one file per resource and tenant: ``<out>/<resource>/<tenant>.csv``
(``.csv.gz``), columns in the mapping's order then the groups field. Rows that cannot be read
or projected are counted and listed, id and reason only, in ``<out>/<resource>.rejected.jsonl``.

Nothing is left half-written: every file is written as ``.partial`` and renamed once the whole
export is written, ``manifest.json`` last, so an ``<out>`` without a manifest holds no complete
export; on any error the export's files and the folders it made are removed again. ``<out>``
must be new or empty, so that no file of an earlier export can pass for one of this one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, Any

import orjson

from consumer.backfill.scope import BackfillScope
from consumer.config import Resource, SyncDefinition
from consumer.export.csv_files import (
    MAX_OPEN_FILES,
    PARTIAL,
    CsvFile,
    ExportError,
    TenantFiles,
    cell,
    writing,
)
from consumer.export.stream import PAGE_SIZE, Rejected, projected_records, unknown

__all__ = [
    "MANIFEST",
    "ExportError",
    "ExportReport",
    "ResourceExport",
    "Watch",
    "columns_of",
    "export_csv",
]

MANIFEST = "manifest.json"

# Progress: the resource, ids walked so far, and how many in all (None: unknown).
Watch = Callable[[str, int, int | None], None]


@dataclass(frozen=True, slots=True)
class ResourceExport:
    """One resource's committed files, and its rejected rows (their file, if any)."""

    resource: str
    reach_schema: str
    columns: list[str]
    files: list[CsvFile]
    rejected: int
    rejected_path: Path | None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass(frozen=True, slots=True)
class ExportReport:
    out: Path
    manifest: Path
    resources: list[ResourceExport]


def columns_of(resource: Resource) -> list[str]:
    """The CSV's columns: the mapping's fields in the order the definition writes them (taken
    as the Reach schema's declared order; reach-sync never reads Reach's schemas), then the
    groups field."""
    columns = list(resource.mapping)
    if resource.groups is not None:
        columns.append(resource.groups.field)
    return columns


async def export_csv(
    definition: SyncDefinition,
    out: Path,
    *,
    resources: Sequence[str],
    tenants: Sequence[str] = (),
    gzipped: bool = False,
    page_size: int = PAGE_SIZE,
    max_open: int = MAX_OPEN_FILES,
    watch: Watch | None = None,
) -> ExportReport:
    """Export ``resources`` (every tenant, or ``tenants``) into ``out``. ConfigurationError for
    an unknown resource or tenant, ExportError for a file that cannot be written; either way,
    and on any other error or interruption, nothing of the export is left."""
    scope = BackfillScope.of(definition, "backfill", tuple(resources), tuple(tenants))
    generated_at = datetime.now(UTC)
    made = _prepare(out, scope.resources)
    pending: list[tuple[str, TenantFiles, _RejectedLog]] = []
    manifest = out / MANIFEST
    try:
        for name in scope.resources:
            resource = definition.resources[name]
            files = TenantFiles(
                out / name, columns_of(resource), gzipped=gzipped, max_open=max_open
            )
            log = _RejectedLog(out / f"{name}.rejected.jsonl")
            pending.append((name, files, log))
            walked = None if watch is None else partial(watch, name)
            await _write(definition, name, files, log, scope.tenants, page_size, walked)
        exports = [
            ResourceExport(
                name,
                definition.resources[name].reach_schema,
                columns_of(definition.resources[name]),
                files.commit(),
                log.count,
                log.commit(),
            )
            for name, files, log in pending
        ]
        _write_manifest(manifest, out, exports, generated_at, gzipped)
    except BaseException:
        for _, files, log in pending:
            files.discard()
            log.discard()
        _unlink(manifest.with_name(manifest.name + PARTIAL))
        _remove(made)
        raise
    return ExportReport(out, manifest, exports)


async def _write(
    definition: SyncDefinition,
    name: str,
    files: TenantFiles,
    log: _RejectedLog,
    tenants: Sequence[str],
    page_size: int,
    walked: Callable[[int, int | None], None] | None,
) -> None:
    columns = columns_of(definition.resources[name])
    stream = projected_records(
        definition, name, tenants=tenants, page_size=page_size, walked=walked
    )
    async with aclosing(stream) as items:
        async for item in items:
            if isinstance(item, Rejected):
                log.add(item)
            else:
                files.write(item.tenant, [cell(item.record.get(c)) for c in columns])
    unknown(definition, name, tenants, files.tenants)
    for tenant in tenants:  # a tenant asked for gets its file, if only a header
        files.touch(tenant)


class _RejectedLog:
    """``<resource>.rejected.jsonl``: one ``{"id", "reason"}`` line per rejected row (reasons
    never hold values), made only when a row is rejected."""

    def __init__(self, final: Path) -> None:
        self._final = final
        self._partial = final.with_name(final.name + PARTIAL)
        self._file: IO[bytes] | None = None
        self.count = 0

    def add(self, rejected: Rejected) -> None:
        with writing(self._partial):
            if self._file is None:
                self._file = self._partial.open("xb")
            line = {"id": rejected.entity_id, "reason": rejected.reason}
            self._file.write(orjson.dumps(line) + b"\n")
        self.count += 1

    def commit(self) -> Path | None:
        if self._file is None:
            return None
        with writing(self._partial):
            _close(self._file, sync=True)
            self._file = None
        with writing(self._final):
            self._partial.replace(self._final)
        return self._final

    def discard(self) -> None:
        if self._file is not None:
            with suppress(OSError):  # removed below either way
                self._file.close()
            self._file = None
        _unlink(self._partial)
        _unlink(self._final)


def _prepare(out: Path, resources: Sequence[str]) -> list[Path]:
    """Make ``out`` and its resource folders before anything is read, so that a place that
    cannot be written fails at once; the folders made, to remove on failure. ``out`` must be
    new or empty."""
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"cannot write {out}: not a directory")
        if any(out.iterdir()):
            raise ExportError(f"{out} is not empty: an export writes into a new or empty directory")
    made = [p for p in (out, *out.parents) if not p.exists()][::-1]
    try:
        with writing(out):
            out.mkdir(parents=True, exist_ok=True)
        for name in resources:
            folder = out / name
            with writing(folder):
                folder.mkdir()
            made.append(folder)
    except BaseException:
        _remove(made)
        raise
    return made


def _write_manifest(
    manifest: Path,
    out: Path,
    exports: list[ResourceExport],
    generated_at: datetime,
    gzipped: bool,
) -> None:
    body: dict[str, Any] = {
        "generated_at": generated_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "format": {
            "encoding": "utf-8",
            "header": True,
            "line_terminator": "\r\n",
            "null": "",
            "nested": "json",
            "compression": "gzip" if gzipped else None,
        },
        "resources": [
            {
                "resource": e.resource,
                "reach_schema": e.reach_schema,
                "columns": e.columns,
                "rows": e.rows,
                "rejected": e.rejected,
                "rejected_file": None
                if e.rejected_path is None
                else e.rejected_path.relative_to(out).as_posix(),
            }
            for e in exports
        ],
        "files": [
            {
                "path": f.path.relative_to(out).as_posix(),
                "resource": e.resource,
                "reach_schema": e.reach_schema,
                "tenant": f.tenant,
                "rows": f.rows,
                "bytes": f.bytes,
                "sha256": f.sha256,
            }
            for e in exports
            for f in e.files
        ],
    }
    partial_path = manifest.with_name(manifest.name + PARTIAL)
    with writing(partial_path):
        handle = partial_path.open("xb")
        try:
            handle.write(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
        finally:
            _close(handle, sync=True)
    with writing(manifest):
        partial_path.replace(manifest)


def _close(handle: IO[bytes], *, sync: bool) -> None:
    try:
        handle.flush()
        if sync:
            os.fsync(handle.fileno())
    finally:
        handle.close()


def _unlink(path: Path) -> None:
    with suppress(OSError):  # cleaning up after an error already being raised
        path.unlink(missing_ok=True)


def _remove(made: list[Path]) -> None:
    """Remove the folders the export made, deepest first, where nothing else was put."""
    for folder in reversed(made):
        with suppress(OSError):  # not empty (or gone): not ours to remove
            folder.rmdir()
