"""The last-sent store on a real Redis: round trips, forgetting, and losing Redis safely."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from consumer.dedup import LastSent, LastSentStore
from consumer.dev import redis as redis_component
from consumer.dev.process import ManagedProcess, free_port, wait_until


async def test_what_was_recorded_is_found_and_forgotten(
    redis_url: str, unique: Callable[[str], str]
) -> None:
    store = LastSentStore(redis_url, unique("dedup"))
    try:
        assert await store.get_many("customers", [1, 2, 3]) == {}
        await store.record_sent("customers", [(1, LastSent("t1", "h1")), (2, LastSent("t2", "h2"))])
        assert await store.get_many("customers", [1, 2, 3]) == {
            "1": LastSent("t1", "h1"),
            "2": LastSent("t2", "h2"),
        }
        # Resources do not share entries.
        assert await store.get_many("transactions", [1]) == {}
        await store.forget("customers", [1])
        assert await store.get_many("customers", [1, 2]) == {"2": LastSent("t2", "h2")}
    finally:
        await store.close()


async def test_an_unreachable_store_answers_unknown_and_recovers(state_root: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    store = LastSentStore(url, "reach-sync-test")
    try:
        # Nothing listens yet: unknown (send everything), never "already sent".
        assert await store.get_many("customers", [1]) is None
        assert store.available is False
        await store.record_sent("customers", [(1, LastSent("t", "h"))])  # logged, not raised

        server = ManagedProcess(
            redis_component.redis_spec(port, state_root / "redis-late", state_root / "logs")
        )
        server.start()
        try:
            wait_until(server, lambda: redis_component.redis_ready(url), 30)
            assert await store.get_many("customers", [1]) == {}
            assert store.available is True
            await store.record_sent("customers", [(1, LastSent("t", "h"))])
            assert await store.get_many("customers", [1]) == {"1": LastSent("t", "h")}
        finally:
            server.stop()
        # Lost with everything in it: unknown again, so the next window re-sends.
        assert await store.get_many("customers", [1]) is None
    finally:
        await store.close()
