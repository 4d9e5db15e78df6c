"""Backfill checkpoints on a real Redis (consumer/backfill/checkpoint.py): what is saved is what
the next process loads, ids keep their type, ``--restart`` starts over, and Redis being away is
retryable, never a lost or half-read checkpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from consumer.backfill.checkpoint import Checkpoint, CheckpointStore, ResourceState
from consumer.errors import Retryable


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client: Redis = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix(unique: Callable[[str], str]) -> str:
    return unique("backfill-checkpoint")


def _checkpoint(scope: str) -> Checkpoint:
    return Checkpoint(
        scope=scope,
        resources={
            "customers": ResourceState(after=4_000_000_000_123, done=False, keys=500),
            "codes": ResourceState(after="b07", done=False, keys=3),
            # a text key that looks like a number stays text
            "numbered": ResourceState(after="42", done=False, keys=1),
            "transactions": ResourceState(after=None, done=True, keys=1200),
        },
        offsets={0: 17, 3: 250, 11: 1},
        runs=["run-one", "run-two"],
        started_ms=1_700_000_000_000,
        completed_ms=None,
        since={"t.audit": {0: 5, 1: 0}, "t.dead-letter": {}},
    )


async def test_a_saved_checkpoint_loads_as_it_was(redis: Redis, prefix: str) -> None:
    store = CheckpointStore(redis, prefix)
    saved = _checkpoint("scope-a")
    await store.save(saved)

    loaded = await CheckpointStore(redis, prefix).load("scope-a")
    assert loaded == saved
    assert loaded is not None
    assert type(loaded.resources["customers"].after) is int
    assert type(loaded.resources["numbered"].after) is str
    assert loaded.keys == 500 + 3 + 1 + 1200
    assert await redis.exists(f"{prefix}:backfill:scope-a") == 1


async def test_a_completed_checkpoint_loads_completed(redis: Redis, prefix: str) -> None:
    store = CheckpointStore(redis, prefix)
    checkpoint = _checkpoint("scope-a")
    await store.save(checkpoint)
    loaded = await store.load("scope-a")
    assert loaded is not None and loaded.completed_ms is None

    checkpoint.completed_ms = 1_700_000_999_000
    await store.save(checkpoint)
    loaded = await store.load("scope-a")
    assert loaded is not None and loaded.completed_ms == 1_700_000_999_000


async def test_each_save_replaces_what_moved(redis: Redis, prefix: str) -> None:
    store = CheckpointStore(redis, prefix)
    checkpoint = _checkpoint("scope-a")
    await store.save(checkpoint)
    checkpoint.state("customers").after = 4_000_000_000_623
    checkpoint.state("customers").keys += 500
    checkpoint.state("fresh").after = 9
    checkpoint.reached({0: 20, 3: 100, 5: 2})  # an offset never moves back
    checkpoint.runs.append("run-three")
    await store.save(checkpoint)

    loaded = await store.load("scope-a")
    assert loaded == checkpoint
    assert loaded is not None
    assert loaded.offsets == {0: 20, 3: 250, 5: 2, 11: 1}
    assert loaded.resources["fresh"] == ResourceState(after=9)


async def test_scopes_and_prefixes_keep_their_own_checkpoints(redis: Redis, prefix: str) -> None:
    store = CheckpointStore(redis, prefix)
    await store.save(_checkpoint("scope-a"))
    assert await store.load("scope-b") is None
    assert await CheckpointStore(redis, f"{prefix}-other").load("scope-a") is None


async def test_start_resumes_a_checkpoint_and_adds_the_run(redis: Redis, prefix: str) -> None:
    store = CheckpointStore(redis, prefix)
    saved = _checkpoint("scope-a")
    await store.save(saved)

    started = await store.start("scope-a", "run-three", restart=False)
    assert started.runs == ["run-one", "run-two", "run-three"]
    assert started.resources == saved.resources
    assert started.offsets == saved.offsets and started.since == saved.since
    assert started.started_ms == saved.started_ms


async def test_start_without_a_checkpoint_begins_one(redis: Redis, prefix: str) -> None:
    started = await CheckpointStore(redis, prefix).start("scope-a", "run-one", restart=False)
    assert started.runs == ["run-one"]
    assert started.resources == {} and started.offsets == {} and started.since == {}
    assert started.completed_ms is None and started.started_ms > 0


async def test_restart_starts_over_even_from_a_completed_checkpoint(
    redis: Redis, prefix: str
) -> None:
    store = CheckpointStore(redis, prefix)
    done = _checkpoint("scope-a")
    done.completed_ms = 1_700_000_999_000
    await store.save(done)

    started = await store.start("scope-a", "run-three", restart=True)
    assert started.runs == ["run-three"]
    assert started.resources == {} and started.offsets == {} and started.since == {}
    assert started.completed_ms is None
    # The old one is gone, so no field of it survives the next save.
    assert await store.load("scope-a") is None
    await store.save(started)
    assert await store.load("scope-a") == started


async def test_delete_forgets_the_checkpoint(redis: Redis, prefix: str) -> None:
    store = CheckpointStore(redis, prefix)
    await store.save(_checkpoint("scope-a"))
    await store.delete("scope-a")
    assert await store.load("scope-a") is None


async def test_redis_unreachable_is_retryable() -> None:
    client: Redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    store = CheckpointStore(client, "nowhere")
    try:
        with pytest.raises(Retryable, match="Redis"):
            await store.load("scope-a")
        with pytest.raises(Retryable, match="Redis"):
            await store.save(_checkpoint("scope-a"))
        with pytest.raises(Retryable, match="Redis"):
            await store.start("scope-a", "run", restart=False)
        with pytest.raises(Retryable, match="Redis"):
            await store.start("scope-a", "run", restart=True)
    finally:
        await client.aclose()
