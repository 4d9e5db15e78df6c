"""The record of a scheduled resource's runs, in Redis beside the last-sent state: which tick
the last run served, when it started and finished, what it did, and the next tick.

The scheduler reads it to decide whether a tick passed without a finished run (then it runs at
once, after a restart too); ``reach-sync status`` shows it. One hash per resource, written by the
process holding the resource's run lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from consumer.errors import Retryable

__all__ = ["RunRecord", "RunStore", "RunSummary", "run_key"]


def run_key(prefix: str, resource: str) -> str:
    return f"{prefix}:scheduled-run:{resource}"


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What one run did: dirty keys read, entities recomputed (once each per window), and
    their outcomes."""

    keys: int = 0
    entities: int = 0
    sent: int = 0
    skipped: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    held: int = 0


@dataclass(frozen=True, slots=True)
class RunRecord:
    # The tick the last run started for, and when; finished_ms is None while it runs (or if
    # its process died: the tick is then not served and the next process runs it).
    tick_ms: int | None = None
    started_ms: int | None = None
    finished_ms: int | None = None
    # The latest tick a run finished for: a tick after it is due.
    served_tick_ms: int | None = None
    next_tick_ms: int | None = None
    # Ticks that passed while the previous run still ran: they were served by one run, late.
    missed_ticks: int = 0
    last: RunSummary = field(default_factory=RunSummary)

    def running(self) -> bool:
        return self.started_ms is not None and self.finished_ms is None

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> RunRecord:
        values = {_text(k): _text(v) for k, v in raw.items()}

        def number(name: str) -> int | None:
            text = values.get(name, "")
            return int(text) if text else None

        summary = RunSummary(**{f.name: number(f.name) or 0 for f in fields(RunSummary)})
        return cls(
            tick_ms=number("tick_ms"),
            started_ms=number("started_ms"),
            finished_ms=number("finished_ms"),
            served_tick_ms=number("served_tick_ms"),
            next_tick_ms=number("next_tick_ms"),
            missed_ticks=number("missed_ticks") or 0,
            last=summary,
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RunStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def read(self, resource: str) -> RunRecord:
        try:
            raw = await self._redis.hgetall(run_key(self._prefix, resource))
        except (RedisError, OSError) as exc:
            raise Retryable(f"scheduled run record unavailable (Redis): {exc}") from exc
        return RunRecord.from_hash(raw)

    async def next_tick(self, resource: str, tick_ms: int) -> None:
        await self._set(resource, {"next_tick_ms": tick_ms})

    async def started(self, resource: str, tick_ms: int, started_ms: int, missed: int) -> None:
        await self._set(
            resource,
            {
                "tick_ms": tick_ms,
                "started_ms": started_ms,
                "finished_ms": "",
                "missed_ticks": missed,
            },
        )

    async def finished(
        self, resource: str, tick_ms: int, finished_ms: int, summary: RunSummary, next_ms: int
    ) -> None:
        counts: dict[str, int | str] = asdict(summary)
        await self._set(
            resource,
            {
                **counts,
                "served_tick_ms": tick_ms,
                "finished_ms": finished_ms,
                "next_tick_ms": next_ms,
            },
        )

    async def _set(self, resource: str, values: Mapping[str, int | str]) -> None:
        mapping: dict[FieldT, EncodableT] = {k: v for k, v in values.items()}
        try:
            await self._redis.hset(run_key(self._prefix, resource), mapping=mapping)
        except (RedisError, OSError) as exc:
            raise Retryable(f"scheduled run record not written (Redis): {exc}") from exc
