"""Where a backfill is, kept in Redis: a pod that dies loses nothing the next one needs.

One hash per scope, ``<prefix>:backfill:<scope id>``. Per resource, the last id whose page's
dirty keys the broker acknowledged (``after``), whether its walk is over, and how many keys it
made; for the whole scope, the furthest offset written to each dirty partition (what "every
entity has an outcome" is measured against), the run ids (what the summary looks for in the
audit), and when it completed. A page is written here only after its dirty keys are durable,
so resuming repeats at most one page, which dedup then skips.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from consumer.errors import Retryable
from consumer.router.dirty import EntityId

__all__ = ["Checkpoint", "CheckpointStore", "ResourceState"]


class ResourceState(msgspec.Struct):
    after: EntityId | None = None
    done: bool = False
    keys: int = 0


@dataclass
class Checkpoint:
    scope: str
    resources: dict[str, ResourceState] = field(default_factory=dict)
    # partition -> the offset after the last dirty key written there.
    offsets: dict[int, int] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    started_ms: int = 0
    completed_ms: int | None = None
    # The audit and dead-letter topics' ends when the backfill first started (outcomes.py).
    since: dict[str, dict[int, int]] = field(default_factory=dict)

    def state(self, resource: str) -> ResourceState:
        return self.resources.setdefault(resource, ResourceState())

    @property
    def keys(self) -> int:
        return sum(s.keys for s in self.resources.values())

    def reached(self, offsets: dict[int, int]) -> None:
        for partition, end in offsets.items():
            self.offsets[partition] = max(end, self.offsets.get(partition, 0))


class CheckpointStore:
    """Reads and writes checkpoints; every Redis failure is Retryable (the walk stops, the
    checkpoint as it was stays)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, scope: str) -> str:
        return f"{self._prefix}:backfill:{scope}"

    async def load(self, scope: str) -> Checkpoint | None:
        try:
            raw = await self._redis.hgetall(self._key(scope))
        except (RedisError, OSError) as exc:
            raise Retryable(f"backfill checkpoint unreadable (Redis): {exc}") from exc
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        checkpoint = Checkpoint(
            scope=scope,
            offsets={int(p): int(o) for p, o in json.loads(fields.get("offsets", "{}")).items()},
            runs=json.loads(fields.get("runs", "[]")),
            started_ms=int(fields.get("started_ms", "0")),
            completed_ms=int(fields["completed_ms"]) if "completed_ms" in fields else None,
            since={
                topic: {int(p): int(o) for p, o in ends.items()}
                for topic, ends in json.loads(fields.get("since", "{}")).items()
            },
        )
        for name, value in fields.items():
            if name.startswith("resource:"):
                state = msgspec.json.decode(value, type=ResourceState)
                checkpoint.resources[name.removeprefix("resource:")] = state
        return checkpoint

    async def save(self, checkpoint: Checkpoint) -> None:
        fields: dict[str, str] = {
            "offsets": json.dumps({str(p): o for p, o in sorted(checkpoint.offsets.items())}),
            "runs": json.dumps(checkpoint.runs),
            "started_ms": str(checkpoint.started_ms),
            "since": json.dumps(checkpoint.since),
            **{
                f"resource:{name}": msgspec.json.encode(state).decode()
                for name, state in checkpoint.resources.items()
            },
        }
        if checkpoint.completed_ms is not None:
            fields["completed_ms"] = str(checkpoint.completed_ms)
        try:
            flat = [part for item in fields.items() for part in item]
            await self._redis.hset(self._key(checkpoint.scope), items=flat)
        except (RedisError, OSError) as exc:
            raise Retryable(f"backfill checkpoint not saved (Redis): {exc}") from exc

    async def start(self, scope: str, run: str, restart: bool) -> Checkpoint:
        """The scope's checkpoint with ``run`` added, or a new one (``restart``: always new)."""
        checkpoint = None if restart else await self.load(scope)
        if checkpoint is None:
            if restart:
                await self.delete(scope)
            checkpoint = Checkpoint(scope=scope, started_ms=int(time.time() * 1000))
        checkpoint.runs.append(run)
        return checkpoint

    async def delete(self, scope: str) -> None:
        try:
            await self._redis.delete(self._key(scope))
        except (RedisError, OSError) as exc:
            raise Retryable(f"backfill checkpoint not reset (Redis): {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
