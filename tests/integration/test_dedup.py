"""The last-sent store on a real Redis: round trips, forgetting, and losing Redis safely."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from reach_devstack import redis as redis_component
from reach_devstack.process import ManagedProcess, free_port, wait_until

from consumer.errors import Retryable
from consumer.sink.dedup import LastSent, LastSentStore


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


async def test_entries_put_in_doubt_keep_their_tenant_and_claim_no_state(
    redis_url: str, unique: Callable[[str], str]
) -> None:
    store = LastSentStore(redis_url, unique("dedup"))
    try:
        tenant = "merchant-n\\1"  # letters, a backslash: the script splits on the newline only
        await store.record_sent(
            "customers", [(1, LastSent(tenant, "h1")), (2, LastSent("t2", "h2"))]
        )
        await store.put_in_doubt("customers", [1, 3])
        # 1 claims no state but still names its tenant (a delete needs it); 3 had no entry and
        # still has none; 2 was not touched.
        assert await store.get_many("customers", [1, 2, 3]) == {
            "1": LastSent(tenant, ""),
            "2": LastSent("t2", "h2"),
        }
    finally:
        await store.close()


async def test_writes_missed_while_redis_was_away_are_put_in_doubt_before_the_next_answer(
    state_root: Path,
) -> None:
    """Redis away for a send (no lookup, no doubt, no hash written) and back with its data: the
    entry must not keep claiming the state from before the send."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = ManagedProcess(
        redis_component.redis_spec(port, state_root / "redis-away", state_root / "logs")
    )
    server.start()
    store = LastSentStore(url, "reach-sync-away")
    try:
        wait_until(server, lambda: redis_component.redis_ready(url), 30)
        await store.record_sent("customers", [(1, LastSent("t", "h0")), (2, LastSent("t", "h0"))])
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)  # connected, never answering: a network partition
        try:
            # A window while Redis does not answer: the lookup fails, the doubt is owed (not
            # raised: the send goes without dedup), and the hash Reach accepted is owed too.
            assert await store.get_many("customers", [1, 2]) is None
            await store.put_in_doubt("customers", [1], required=False)
            with pytest.raises(Retryable):
                await store.put_in_doubt("customers", [2])
            await store.record_sent("customers", [(2, LastSent("t", "h1"))])
        finally:
            os.kill(server.pid, signal.SIGCONT)
        # Back, with everything it had: neither entry claims the state from before the sends.
        assert await store.get_many("customers", [1, 2]) == {
            "1": LastSent("t", ""),
            "2": LastSent("t", ""),
        }
        assert store.available is True
    finally:
        await store.close()
        server.stop()
