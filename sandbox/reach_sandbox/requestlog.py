"""The request log: one row per partner or API request, for tests to assert what a client sent.

Rows are buffered in memory and written in bulk by a periodic flush (and before every admin
read of the log), so logging adds no database round trip to a request.
"""

from __future__ import annotations

import sqlite3
from dataclasses import astuple, dataclass
from typing import Any

__all__ = ["LogEntry", "RequestLog", "read_log", "write_log"]


@dataclass(frozen=True, slots=True)
class LogEntry:
    at: float
    method: str
    path: str
    tenant_id: str | None
    status: int
    records: int | None
    duration_ms: float
    request_id: str
    credential: str | None


class RequestLog:
    def __init__(self) -> None:
        self._buffer: list[LogEntry] = []

    def append(self, entry: LogEntry) -> None:
        self._buffer.append(entry)

    def take(self) -> list[LogEntry]:
        """Hand the buffered rows to a flush (called on the event loop, so no lock is needed)."""
        entries, self._buffer = self._buffer, []
        return entries

    def discard(self) -> None:
        self._buffer.clear()


def write_log(conn: sqlite3.Connection, entries: list[LogEntry]) -> None:
    conn.executemany(
        "INSERT INTO request_log (at, method, path, tenant_id, status, records, duration_ms, "
        "request_id, credential) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [astuple(e) for e in entries],
    )


def read_log(
    conn: sqlite3.Connection,
    after_seq: int,
    limit: int,
    tenant_id: str | None,
    path_prefix: str | None,
) -> list[dict[str, Any]]:
    where: list[str] = ["seq > ?"]
    args: list[Any] = [after_seq]
    if tenant_id is not None:
        where.append("tenant_id = ?")
        args.append(tenant_id)
    if path_prefix is not None:
        where.append("substr(path, 1, ?) = ?")
        args.extend((len(path_prefix), path_prefix))
    rows = conn.execute(
        "SELECT seq, at, method, path, tenant_id, status, records, duration_ms, request_id, "
        f"credential FROM request_log WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
        (*args, limit),
    )
    names = (
        "seq",
        "at",
        "method",
        "path",
        "tenantId",
        "status",
        "records",
        "durationMs",
        "requestId",
        "credential",
    )
    return [dict(zip(names, r, strict=True)) for r in rows]
