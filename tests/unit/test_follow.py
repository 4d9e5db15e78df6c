"""Following batches to their end through the client's transport seam (``httpx.MockTransport``):
failed status reads are asked again, the bound ends an attempt, and what an attempt could not
follow is followed before the next send."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from consumer.config import Auth, Destination
from consumer.errors import ConfigurationError, Retryable
from consumer.reach.client import UPSERT_BATCH_TYPE, ReachClient
from consumer.sink.follow import Followed, FollowGivenUp, Outstanding, follow

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler) -> ReachClient:
    auth = Auth(mode="jwt", partner_id="partner-1", secret=SecretStr("s" * 32), token_ttl_s=3600)
    destination = Destination(base_url="https://reach.test", auth=auth)
    return ReachClient(destination, transport=httpx.MockTransport(handler))


def _batch(batch_id: str, status: str, schema: str = "customers") -> dict[str, Any]:
    return {"batchId": batch_id, "status": status, "schemaName": schema}


def _status(batch_id: str, status: str) -> httpx.Response:
    return httpx.Response(200, json={"data": _batch(batch_id, status)})


async def test_a_failed_status_read_is_asked_again_until_the_batch_finished() -> None:
    answers = iter([503, 502, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        return _status("b1", "success") if status == 200 else httpx.Response(status)

    async with _client(handler) as client:
        followed = await follow(client, "merchant-1", ["b1"])
    assert followed.statuses["b1"].finished and set(followed.finished_at) == {"b1"}


async def test_status_reads_failing_past_the_bound_end_the_attempt() -> None:
    async with _client(lambda _r: httpx.Response(503)) as client:
        with pytest.raises(FollowGivenUp, match="could not be read") as caught:
            await follow(client, "merchant-1", ["b1"], bound_s=0.0)
    assert isinstance(caught.value, Retryable)


async def test_a_refused_tenant_is_not_asked_again() -> None:
    reads = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal reads
        reads += 1
        return httpx.Response(403)

    async with _client(handler) as client:
        with pytest.raises(ConfigurationError):
            await follow(client, "merchant-1", ["b1"])
    assert reads == 1


async def test_kept_batches_are_followed_and_reported_before_the_next_send() -> None:
    finished: list[Followed] = []

    async def on_finished(followed: Followed) -> None:
        finished.append(followed)

    readable = False

    def handler(request: httpx.Request) -> httpx.Response:
        return _status("b1", "success") if readable else httpx.Response(503)

    outstanding = Outstanding(follow_bound_s=0.0)
    outstanding.keep_batches("customers", "merchant-1", ["b1"], on_finished)
    async with _client(handler) as client:
        await outstanding.settle("customers", "merchant-2", client)  # another tenant: nothing
        with pytest.raises(FollowGivenUp):
            await outstanding.settle("customers", "merchant-1", client)
        assert (len(outstanding), finished) == (1, [])
        readable = True
        await outstanding.settle("customers", "merchant-1", client)
    assert len(outstanding) == 0
    assert [f.statuses["b1"].status for f in finished] == ["success"]


async def test_a_lost_answer_waits_for_the_tenants_unfinished_batches_of_its_schema() -> None:
    seen: list[str] = []
    polls = {"b-new": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/api/batches":
            assert request.url.params["batchType"] == UPSERT_BATCH_TYPE
            assert request.url.params["sortBy"] == "-createdAt"
            results = [
                _batch("b-new", "processing"),
                _batch("b-other-schema", "processing", schema="transactions"),
                _batch("b-old", "success"),
            ]
            return httpx.Response(200, json={"data": {"results": results}})
        polls["b-new"] += 1
        return _status("b-new", "success" if polls["b-new"] > 1 else "processing")

    outstanding = Outstanding()
    outstanding.keep_lost("customers", "merchant-1", "customers", UPSERT_BATCH_TYPE)
    async with _client(handler) as client:
        await outstanding.settle("customers", "merchant-1", client)
    assert len(outstanding) == 0
    assert seen == ["GET /api/batches", "GET /api/batches/b-new", "GET /api/batches/b-new"]
