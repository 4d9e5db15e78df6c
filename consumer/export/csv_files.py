"""One CSV file per tenant, written as rows stream in, committed only once all of them are written.

Each file is written as ``<name>.partial`` and renamed by ``commit``, so a reader never finds a
half-written export under its final name; ``discard`` removes the partials. Tenants' rows come
interleaved (the walk goes by id), so a file stays open between rows, but at most ``max_open``
at a time: the least recently written is closed and later reopened to append (gzip then starts
a new member, which gzip readers take as one stream). Size and SHA-256 are counted as the bytes
are written, so the manifest needs no second read of millions of rows.

Cell encoding (docs/operations.md, "CSV export"): RFC 4180 (``\\r\\n``, quotes only where
needed), UTF-8 without BOM; null is an empty cell, a string is its text, anything else its
compact JSON (true/false, numbers as JSON prints them, arrays and objects).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import orjson

from consumer.errors import SyncError

__all__ = ["MAX_OPEN_FILES", "CsvFile", "ExportError", "TenantFiles", "cell", "file_name"]

# Open tenant files at most: far under any default descriptor limit (1024), many tenants each.
MAX_OPEN_FILES = 64
PARTIAL = ".partial"


class ExportError(SyncError):
    """A file of the export cannot be written (a directory not writable, a full disk)."""


@dataclass(frozen=True, slots=True)
class CsvFile:
    """A committed file: where it is, whose rows, how many, and its size and SHA-256."""

    path: Path
    tenant: str
    rows: int
    bytes: int
    sha256: str


def cell(value: Any) -> str:
    """A record's value as a CSV cell (module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    text = orjson.dumps(value)
    # A value JSON carries as a string (a UUID, say) is its text, as a str would be.
    return str(orjson.loads(text)) if text.startswith(b'"') else text.decode()


def file_name(tenant: str, suffix: str) -> str:
    """The tenant as a file name: percent-encoded where it is not a plain name (a ``/``, a
    leading dot), so that no tenant can name a path outside its resource's folder."""
    name = quote(tenant, safe="-_.~")
    if name.startswith(".") or not name:
        name = "%2E" + name[1:] if name else "%00"
    return name + suffix


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while writing ``path`` as an ExportError naming it."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ExportError(f"cannot write {path}: {reason}") from exc


class _Counted:
    """The bytes of a file as they are written: its size and SHA-256, across reopenings."""

    def __init__(self) -> None:
        self.raw: BinaryIO | None = None
        self.size = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        if self.raw is None:
            raise ValueError("write to a closed file")
        self.raw.write(data)
        self.size += len(data)
        self.sha.update(data)
        return len(data)

    def flush(self) -> None:
        if self.raw is not None:
            self.raw.flush()


class _Target:
    """One tenant's file: open or closed, its counts kept either way."""

    def __init__(self, tenant: str, final: Path, gzipped: bool) -> None:
        self.tenant = tenant
        self.final = final
        self.partial = final.with_name(final.name + PARTIAL)
        self.rows = 0
        self._gzipped = gzipped
        self._counted = _Counted()
        self._gz: gzip.GzipFile | None = None
        self._created = False
        self.writer: Any = None  # the csv writer while open

    @property
    def open(self) -> bool:
        return self._counted.raw is not None

    def reopen(self) -> bool:
        """Open to append (create the first time: never over an existing file); whether it was
        created now."""
        created = not self._created
        self._counted.raw = self.partial.open("xb" if created else "ab")
        self._created = True
        sink: Any = self._counted
        if self._gzipped:
            self._gz = gzip.GzipFile(filename=self.final.name[:-3], mode="wb", fileobj=sink)
            sink = self._gz
        self.writer = csv.writer(_Text(sink), lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        return created

    def close(self, sync: bool = False) -> None:
        """Close the file (synced to disk with ``sync``); closed even when that fails."""
        raw, gz = self._counted.raw, self._gz
        self._gz = None
        self.writer = None
        try:
            if gz is not None:
                gz.close()  # writes the member's trailer through _counted; leaves raw open
            if raw is not None:
                raw.flush()
                if sync:
                    os.fsync(raw.fileno())
        finally:
            self._counted.raw = None
            if raw is not None:
                raw.close()

    def committed(self) -> CsvFile:
        counted = self._counted
        return CsvFile(self.final, self.tenant, self.rows, counted.size, counted.sha.hexdigest())


class _Text:
    """csv writes text; the file takes UTF-8 bytes (no BOM)."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink

    def write(self, text: str) -> int:
        self._sink.write(text.encode())
        return len(text)


class TenantFiles:
    """The CSV files of one resource, one per tenant, in ``directory`` (which must exist)."""

    def __init__(
        self,
        directory: Path,
        columns: Sequence[str],
        *,
        gzipped: bool = False,
        max_open: int = MAX_OPEN_FILES,
    ) -> None:
        self._directory = directory
        self._columns = list(columns)
        self._suffix = ".csv.gz" if gzipped else ".csv"
        self._gzipped = gzipped
        self._max_open = max(1, max_open)
        self._targets: dict[str, _Target] = {}
        self._open: OrderedDict[str, _Target] = OrderedDict()

    @property
    def tenants(self) -> set[str]:
        return set(self._targets)

    def write(self, tenant: str, cells: Sequence[str]) -> None:
        """One row of ``tenant``'s file (its header first, when the file is new)."""
        target = self._target(tenant)
        with writing(target.partial):
            target.writer.writerow(cells)
        target.rows += 1

    def touch(self, tenant: str) -> None:
        """``tenant``'s file even if it gets no row: its header alone."""
        self._target(tenant)

    def commit(self) -> list[CsvFile]:
        """Close every file (synced to disk) and give each its final name; the files, by
        tenant. On an error, what is left is for ``discard``."""
        for target in self._targets.values():
            with writing(target.partial):
                target.close(sync=True)
        self._open.clear()
        files = []
        for tenant in sorted(self._targets):
            target = self._targets[tenant]
            with writing(target.final):
                target.partial.replace(target.final)
            files.append(target.committed())
        return files

    def discard(self) -> None:
        """Close and remove every file of this export, partial or committed; never raises."""
        for target in self._targets.values():
            with suppress(OSError):  # removed below either way
                target.close()
            for path in (target.partial, target.final):
                with suppress(OSError):  # cleaning up after an error already being raised
                    path.unlink(missing_ok=True)
        self._open.clear()

    def _target(self, tenant: str) -> _Target:
        target = self._targets.get(tenant)
        if target is None:
            final = self._directory / file_name(tenant, self._suffix)
            target = _Target(tenant, final, self._gzipped)
            self._targets[tenant] = target
        if target.open:
            self._open.move_to_end(tenant)
            return target
        if len(self._open) >= self._max_open:
            _, oldest = self._open.popitem(last=False)
            with writing(oldest.partial):
                oldest.close()
        with writing(target.partial):
            if target.reopen():
                target.writer.writerow(self._columns)
        self._open[tenant] = target
        return target
