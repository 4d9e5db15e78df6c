"""The Reach client's own logic through its transport seam (``httpx.MockTransport``).

Request cutting, refusal isolation, the classification table, Retry-After, status parsing, JWT
minting and polling. What Reach (the sandbox) actually does with these requests is in
tests/integration/test_reach_client.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import orjson
import pytest
from pydantic import SecretStr

from consumer.config import Auth, Destination
from consumer.errors import BadRecord, ConfigurationError, Retryable
from consumer.reach.auth import hs256_token
from consumer.reach.batching import UPSERT_BODY, Item, named_errors, plan_chunks
from consumer.reach.classify import retry_after_seconds
from consumer.reach.client import BatchState, ReachClient, RequestInfo
from consumer.reach.status import parse_status

SECRET = "unit-test-partner-secret-0123456789-abcdef"
STATIC_KEY = "rk_unit_static_key_0123456789"
BASE_URL = "http://127.0.0.1:9"  # never dialled: every request goes to the mock transport

Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


def destination(**overrides: Any) -> Destination:
    auth = overrides.pop("auth", None) or Auth(
        mode="jwt", partner_id="partner-1", secret=SecretStr(SECRET), token_ttl_s=3600
    )
    return Destination(base_url=BASE_URL, auth=auth, **overrides)


def client(handler: Handler, clock: Callable[[], float] = time.time, **dest: Any) -> ReachClient:
    return ReachClient(destination(**dest), transport=httpx.MockTransport(handler), clock=clock)


def accepted(batch_id: str, count: int) -> httpx.Response:
    data = {"batchId": batch_id, "recordCount": count, "message": "queued"}
    return httpx.Response(202, json={"success": True, "message": "ok", "data": data})


def resources(request: httpx.Request) -> list[dict[str, Any]]:
    body: dict[str, Any] = orjson.loads(request.content)
    records: list[dict[str, Any]] = body["resources"]
    return records


def customers(count: int, pad: int = 0) -> dict[str, dict[str, Any]]:
    return {f"c{n}": {"customerId": f"c{n}", "note": "x" * pad} for n in range(count)}


class FakeReach:
    """Accepts every batch, numbering them; ``refuse`` may answer instead."""

    def __init__(self, refuse: Callable[[httpx.Request], httpx.Response | None] | None = None):
        self.requests: list[httpx.Request] = []
        self._refuse = refuse

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        refused = self._refuse(request) if self._refuse else None
        if refused is not None:
            return refused
        return accepted(f"b{len(self.requests)}", len(resources(request)))


# --- cutting -------------------------------------------------------------------------------------


async def test_batches_are_cut_by_count_in_order() -> None:
    reach = FakeReach()
    async with client(reach, batch_size=3) as api:
        result = await api.upsert_batch("merchant-1", "customers", customers(7))

    assert [len(resources(r)) for r in reach.requests] == [3, 3, 1]
    assert [b.external_ids for b in result.batches] == [
        ("c0", "c1", "c2"),
        ("c3", "c4", "c5"),
        ("c6",),
    ]
    assert [b.record_count for b in result.batches] == [3, 3, 1]
    assert result.complete and not result.rejected and not result.unsent
    first = reach.requests[0]
    assert first.url.path == "/api/resources/customers/batch"
    assert first.url.params["onconflict"] == "upsert"
    assert first.url.params["dependencyWaitTimeout"] == "3600"
    assert first.headers["content-type"] == "application/json"


async def test_batches_are_cut_by_serialised_bytes() -> None:
    reach = FakeReach()
    async with client(reach, max_request_bytes=10_000) as api:
        result = await api.upsert_batch("merchant-1", "customers", customers(10, pad=2_900))

    sizes = [len(r.content) for r in reach.requests]
    assert all(size <= 10_000 for size in sizes)
    assert [len(resources(r)) for r in reach.requests] == [3, 3, 3, 1]
    assert sum(len(b.external_ids) for b in result.batches) == 10


def test_a_body_may_fill_the_cap_exactly() -> None:
    items = [Item(f"c{n}", b'"' + b"x" * 98 + b'"') for n in range(3)]  # 100 bytes each
    exact = UPSERT_BODY.size(items[:2])
    chunks, oversize = plan_chunks(items, UPSERT_BODY, 1000, exact)
    assert [len(c) for c in chunks] == [2, 1] and not oversize
    assert len(UPSERT_BODY.render(items[:2])) == exact
    assert orjson.loads(UPSERT_BODY.render(items[:2]))["resources"] == ["x" * 98] * 2


async def test_a_record_over_the_cap_or_unencodable_is_rejected_alone() -> None:
    reach = FakeReach()
    records: dict[str, dict[str, Any]] = {
        **customers(2),
        "huge": {"customerId": "huge", "note": "x" * 20_000},
        "odd": {"customerId": "odd", "note": object()},
    }
    async with client(reach, max_request_bytes=10_000) as api:
        result = await api.upsert_batch("merchant-1", "customers", records)

    assert [b.external_ids for b in result.batches] == [("c0", "c1")]
    rejected = {r.external_id: r for r in result.rejected}
    assert set(rejected) == {"huge", "odd"}
    assert "10000" in rejected["huge"].reason
    assert "JSON" in rejected["odd"].reason
    assert rejected["huge"].status is None


async def test_deletes_send_at_most_1000_ids_without_cascade() -> None:
    reach = FakeReach()

    def handler(request: httpx.Request) -> httpx.Response:
        reach.requests.append(request)
        ids = orjson.loads(request.content)["externalIds"]
        return accepted(f"d{len(reach.requests)}", len(ids))

    async with client(handler) as api:
        result = await api.delete_batch("merchant-1", "customers", [f"c{n}" for n in range(2500)])

    bodies = [orjson.loads(r.content) for r in reach.requests]
    assert [len(b["externalIds"]) for b in bodies] == [1000, 1000, 500]
    assert all(b["cascade"] is False for b in bodies)
    assert all(r.method == "DELETE" for r in reach.requests)
    assert [b.record_count for b in result.batches] == [1000, 1000, 500]


# --- isolating refused records -------------------------------------------------------------------


def invalid(errors: list[dict[str, Any]], status: int = 400) -> httpx.Response:
    return httpx.Response(
        status, json={"success": False, "message": "records are invalid", "errors": errors}
    )


async def test_a_refusal_naming_indexes_drops_exactly_those_records() -> None:
    def refuse(request: httpx.Request) -> httpx.Response | None:
        records = resources(request)
        errors = [
            {"index": i, "externalId": r["customerId"], "field": "email", "message": "bad email"}
            for i, r in enumerate(records)
            if r["customerId"] in ("c2", "c5")
        ]
        return invalid(errors) if errors else None

    reach = FakeReach(refuse)
    async with client(reach) as api:
        result = await api.upsert_batch("merchant-1", "customers", customers(8))

    assert len(reach.requests) == 2
    assert [r["customerId"] for r in resources(reach.requests[1])] == [
        "c0",
        "c1",
        "c3",
        "c4",
        "c6",
        "c7",
    ]
    assert [r.external_id for r in result.rejected] == ["c2", "c5"]
    bad = result.rejected[0]
    assert bad.status == 400 and bad.reason == "email: bad email"
    assert bad.body is not None and orjson.loads(bad.body)[0]["index"] == 2
    assert result.batches[0].external_ids == ("c0", "c1", "c3", "c4", "c6", "c7")


async def test_a_refusal_naming_external_ids_only_is_attributed_too() -> None:
    def refuse(request: httpx.Request) -> httpx.Response | None:
        ids = [r["customerId"] for r in resources(request)]
        return invalid([{"externalId": "c1", "message": "nope"}]) if "c1" in ids else None

    reach = FakeReach(refuse)
    async with client(reach) as api:
        result = await api.upsert_batch("merchant-1", "customers", customers(3))
    assert [r.external_id for r in result.rejected] == ["c1"]
    assert result.batches[0].external_ids == ("c0", "c2")


async def test_a_refusal_naming_nothing_is_bisected_to_the_bad_record() -> None:
    def refuse(request: httpx.Request) -> httpx.Response | None:
        ids = [r["customerId"] for r in resources(request)]
        return invalid([], status=422) if "c5" in ids else None

    reach = FakeReach(refuse)
    async with client(reach) as api:
        result = await api.upsert_batch("merchant-1", "customers", customers(16))

    assert [(r.external_id, r.status) for r in result.rejected] == [("c5", 422)]
    sent = sorted(i for b in result.batches for i in b.external_ids)
    assert sent == sorted(f"c{n}" for n in range(16) if n != 5)
    assert len(reach.requests) <= 2 * 4 + 1  # one refused request per halving, plus the rest


async def test_a_413_splits_the_request_smaller() -> None:
    def refuse(request: httpx.Request) -> httpx.Response | None:
        too_big = len(resources(request)) > 2
        return (
            httpx.Response(413, json={"success": False, "message": "too big"}) if too_big else None
        )

    reach = FakeReach(refuse)
    async with client(reach) as api:
        result = await api.upsert_batch("merchant-1", "customers", customers(8))
    assert [len(b.external_ids) for b in result.batches] == [2, 2, 2, 2]
    assert not result.rejected


async def test_a_failure_mid_call_reports_every_id_exactly_once() -> None:
    def refuse(request: httpx.Request) -> httpx.Response | None:
        ids = [r["customerId"] for r in resources(request)]
        if "c1" in ids:
            return invalid([{"index": ids.index("c1"), "message": "bad"}])
        if "c4" in ids:
            return httpx.Response(503, headers={"Retry-After": "3"}, json={"message": "busy"})
        return None

    reach = FakeReach(refuse)
    async with client(reach, batch_size=3) as api:
        result = await api.upsert_batch("merchant-1", "customers", customers(9))

    assert not result.complete and isinstance(result.error, Retryable)
    assert result.error.retry_after_s == 3.0
    assert [b.external_ids for b in result.batches] == [("c0", "c2")]
    assert [r.external_id for r in result.rejected] == ["c1"]
    assert result.unsent == ("c3", "c4", "c5", "c6", "c7", "c8")
    every = [*result.unsent, *(r.external_id for r in result.rejected)]
    every += [i for b in result.batches for i in b.external_ids]
    assert sorted(every) == sorted(customers(9))


async def test_an_acceptance_without_a_batch_id_stops_the_call() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, json={"success": True, "data": {"message": "queued"}})

    async with client(handler, batch_size=2) as api:
        result = await api.upsert_batch("merchant-1", "customers", customers(3))
    assert isinstance(result.error, ConfigurationError) and result.error.scope == "api contract"
    assert result.unsent == ("c0", "c1", "c2") and not result.batches


async def test_empty_calls_send_nothing() -> None:
    reach = FakeReach()
    async with client(reach) as api:
        assert (await api.upsert_batch("merchant-1", "customers", {})).complete
        assert (await api.delete_batch("merchant-1", "customers", [])).complete
        assert await api.wait_batches("merchant-1", []) == {}
    assert reach.requests == []


def test_named_errors_ignore_entries_that_name_no_record() -> None:
    body = {"errors": [{"index": 9}, {"index": True}, "junk", {"externalId": "zz"}, {"index": 1}]}
    assert named_errors(body, ["a", "b"]) == {1: [{"index": 1}]}
    assert named_errors({"message": "no list"}, ["a"]) == {}
    assert named_errors("not json object", ["a"]) == {}


# --- classification ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "scope"),
    [
        (400, BadRecord, None),
        (409, BadRecord, None),
        (413, BadRecord, None),
        (422, BadRecord, None),
        (401, ConfigurationError, "tenant or credential"),
        (403, ConfigurationError, "tenant or credential"),
        (404, ConfigurationError, "schema"),
        (405, ConfigurationError, "api contract"),
        (302, ConfigurationError, "api contract"),
        (408, Retryable, None),
        (429, Retryable, None),
        (500, Retryable, None),
        (502, Retryable, None),
        (503, Retryable, None),
        (504, Retryable, None),
    ],
)
async def test_single_upsert_classification(status: int, kind: type, scope: str | None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"success": False, "message": "no"})

    async with client(handler) as api:
        with pytest.raises(kind) as caught:
            await api.upsert_one("merchant-1", "customers", {"customerId": "c1"}, external_id="c1")
    error = caught.value
    assert f"answered {status}: no" in str(error)
    if isinstance(error, ConfigurationError):
        assert (error.status, error.scope) == (status, scope)
    if isinstance(error, BadRecord):
        assert (error.status, error.external_id) == (status, "c1")


@pytest.mark.parametrize(
    ("status", "kind"), [(404, Retryable), (400, ConfigurationError), (503, Retryable)]
)
async def test_status_read_classification(status: int, kind: type) -> None:
    async with client(lambda _r: httpx.Response(status, json={"message": "x"})) as api:
        with pytest.raises(kind):
            await api.batch_status("merchant-1", "b1")


@pytest.mark.parametrize(
    ("failure", "ambiguous"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("no route"), False),
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("cut"), True),
    ],
)
async def test_transport_failures_are_retryable_and_say_whether_reach_may_have_applied_them(
    failure: Exception, ambiguous: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    async with client(handler) as api:
        with pytest.raises(Retryable) as caught:
            await api.upsert_one("merchant-1", "customers", {"customerId": "c1"})
        result = await api.upsert_batch("merchant-1", "customers", customers(2))
    assert caught.value.__cause__ is failure
    assert caught.value.ambiguous is ambiguous
    # The log line of a failed transport names the request that failed.
    assert "POST /api/resources/customers " in str(caught.value)
    assert isinstance(result.error, Retryable) and result.unsent == ("c0", "c1")
    assert "POST /api/resources/customers/batch " in str(result.error)
    assert result.in_doubt == (("c0", "c1") if ambiguous else ())


@pytest.mark.parametrize(
    ("status", "ambiguous"), [(429, False), (500, True), (502, True), (503, True), (504, True)]
)
async def test_an_answer_that_may_hide_an_applied_request_is_ambiguous(
    status: int, ambiguous: bool
) -> None:
    async with client(lambda _r: httpx.Response(status, json={"message": "x"})) as api:
        with pytest.raises(Retryable) as caught:
            await api.upsert_one("merchant-1", "customers", {"customerId": "c1"})
        result = await api.upsert_batch("merchant-1", "customers", customers(3))
    assert caught.value.ambiguous is ambiguous
    assert result.in_doubt == (("c0", "c1", "c2") if ambiguous else ())


async def test_bad_record_body_is_bounded_and_names_the_record() -> None:
    huge: dict[str, Any] = {
        "success": False,
        "message": "invalid",
        "errors": [{"index": 0, "externalId": "c9"}],
    }
    huge["padding"] = "y" * 10_000
    async with client(lambda _r: httpx.Response(400, json=huge)) as api:
        with pytest.raises(BadRecord) as caught:
            await api.upsert_one("merchant-1", "customers", {"customerId": "c9"})
    assert caught.value.external_id == "c9"
    assert caught.value.body is not None and len(caught.value.body) <= 2048


async def test_no_secret_or_token_reaches_an_error_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(401, json={"message": f"bad token {token} for secret {SECRET}"})

    async with client(handler) as api:
        with pytest.raises(ConfigurationError) as caught:
            await api.upsert_one("merchant-1", "customers", {"customerId": "c1"})
        result = await api.upsert_batch("merchant-1", "customers", customers(1))
    for text in (str(caught.value), str(result.error)):
        assert SECRET not in text and "eyJ" not in text and "***" in text
    assert SECRET not in repr(api)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 2.5 ") == 2.5
    assert retry_after_seconds("Wed, 01 May 2024 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Wed, 01 May 2024 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds("-3") == 0.0
    for garbage in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(garbage) is None


async def test_429_carries_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "11"}, json={"message": "slow down"})

    async with client(handler) as api:
        with pytest.raises(Retryable) as caught:
            await api.batch_status("merchant-1", "b1")
    assert caught.value.retry_after_s == 11.0


async def test_bad_names_never_reach_the_wire() -> None:
    reach = FakeReach()
    async with client(reach) as api:
        with pytest.raises(ConfigurationError):
            await api.upsert_one("merchant-1", "cust/omers", {"customerId": "c1"})
        with pytest.raises(ConfigurationError):
            await api.batch_status("merchant\n1", "b1")
        result = await api.upsert_batch("", "customers", customers(1))
    assert isinstance(result.error, ConfigurationError) and result.unsent == ("c0",)
    assert reach.requests == []


# --- batch status --------------------------------------------------------------------------------


def sandbox_status(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "batchId": "b1",
        "status": "partial_success",
        "progress": {
            "totalRecords": 5,
            "processedRecords": 5,
            "successfulRecords": 3,
            "pendingRecords": 0,
            "failedRecords": 2,
            "successRate": 0.6,
        },
        "errors": {
            "summary": {"INJECTED_FAILURE": 2},
            "details": {
                "c1": [
                    {"index": 1, "externalId": "c1", "code": "INJECTED_FAILURE", "message": "no"}
                ],
                "c3": [
                    {
                        "index": 3,
                        "code": "MISSING_DEPENDENCY",
                        "field": "customerId",
                        "message": "gone",
                    }
                ],
            },
            "message": "2 of 5 records failed",
        },
    }
    doc.update(overrides)
    return doc


def test_status_in_the_sandbox_shape() -> None:
    status = parse_status("b1", sandbox_status())
    assert status.state is BatchState.SUCCEEDED and status.terminal and status.finished
    assert status.failures == (
        ("c1", "INJECTED_FAILURE: no", "INJECTED_FAILURE"),
        ("c3", "MISSING_DEPENDENCY: customerId: gone", "MISSING_DEPENDENCY"),
    )
    assert status.unattributed_failures == 0 and not status.notes
    assert (status.progress.total, status.progress.failed) == (5, 2)
    assert status.message == "2 of 5 records failed"


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("success", BatchState.SUCCEEDED),
        ("COMPLETED", BatchState.SUCCEEDED),
        ("Partial_Success", BatchState.SUCCEEDED),
        ("failed", BatchState.FAILED),
        ("ERROR", BatchState.FAILED),
        ("pending", BatchState.RUNNING),
        ("processing", BatchState.RUNNING),
        ("queued", BatchState.RUNNING),
        (None, BatchState.RUNNING),
        (7, BatchState.RUNNING),
    ],
)
def test_status_values(raw: Any, state: BatchState) -> None:
    assert parse_status("b1", sandbox_status(status=raw, errors=None)).state is state


def test_status_details_variants() -> None:
    as_list = sandbox_status(
        errors={"details": [{"resourceExternalId": "c1", "error": "x"}, {"message": "anon"}]}
    )
    as_strings = sandbox_status(errors={"details": {"c1": "broken", "c3": {"reason": "why"}}})
    unknown = sandbox_status(errors={"details": "2 records failed"})
    not_an_object = sandbox_status(errors=["c1"])

    listed = parse_status("b1", as_list)
    assert listed.failures == (("c1", "x", None), (None, "anon", None))
    assert listed.unattributed_failures == 1
    assert parse_status("b1", as_strings).failures == (("c1", "broken", None), ("c3", "why", None))
    for shape in (unknown, not_an_object):
        status = parse_status("b1", shape)
        assert status.failures == () and status.unattributed_failures == 2
        assert any("not named" in note for note in status.notes)


def test_status_of_a_batch_failed_as_a_whole_or_unreadable() -> None:
    whole = sandbox_status(
        status="failed",
        progress={"totalRecords": 4, "failedRecords": 0},
        errors={"summary": {"BATCH_LOST_ON_RESTART": 1}, "details": {}},
    )
    assert parse_status("b1", whole).unattributed_failures == 4
    garbage = parse_status("b1", "<html>")
    assert garbage.state is BatchState.RUNNING and not garbage.finished and garbage.notes


def test_status_with_only_parked_records_left_is_finished() -> None:
    parked = sandbox_status(
        status="processing",
        progress={"totalRecords": 3, "processedRecords": 3, "pendingRecords": 1},
        errors=None,
        pendingResources=[{"resourceExternalId": "t2", "missingDependencies": []}],
    )
    status = parse_status("b1", parked)
    assert status.finished and not status.terminal
    assert status.pending_external_ids == ("t2",)


# --- polling -------------------------------------------------------------------------------------


def status_response(batch_id: str, status: str) -> httpx.Response:
    doc = {"batchId": batch_id, "status": status, "progress": {"totalRecords": 1}}
    return httpx.Response(200, json={"success": True, "data": doc})


async def test_wait_polls_until_terminal() -> None:
    polls: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        batch_id = request.url.path.rsplit("/", 1)[1]
        polls[batch_id] = polls.get(batch_id, 0) + 1
        done = polls[batch_id] >= (3 if batch_id == "slow" else 1)
        assert request.url.params["includePendingDetails"] == "true"
        return status_response(batch_id, "success" if done else "processing")

    async with client(handler) as api:
        found = await api.wait_batches(
            "merchant-1", ["slow", "fast"], poll_interval_s=0.01, timeout_s=5
        )
    assert list(found) == ["slow", "fast"]
    assert all(s.state is BatchState.SUCCEEDED for s in found.values())
    assert polls == {"slow": 3, "fast": 1}


async def test_wait_returns_the_latest_status_at_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    async with client(lambda r: status_response("b1", "processing")) as api:
        started = loop.time()
        found = await api.wait_batches("merchant-1", ["b1"], poll_interval_s=0.02, timeout_s=0.2)
    assert not found["b1"].finished
    assert loop.time() - started < 1.0


async def test_wait_bounds_concurrent_polls_and_raises_a_failed_poll() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        batch_id = request.url.path.rsplit("/", 1)[1]
        if batch_id == "broken":
            return httpx.Response(503, json={"message": "down"})
        return status_response(batch_id, "success")

    async with client(handler) as api:
        found = await api.wait_batches("merchant-1", [f"b{n}" for n in range(30)], timeout_s=5)
        with pytest.raises(Retryable):
            await api.wait_batches("merchant-1", ["b1", "broken", "b2"], timeout_s=5)
    assert len(found) == 30 and 1 < peak <= 8


# --- auth and the request seam -------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_jwt_claims_caching_and_refresh() -> None:
    clock = FakeClock(1_700_000_000.0)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"].removeprefix("Bearer "))
        assert request.headers["reach-tenant-id"] == "merchant-7"
        return status_response("b1", "success")

    async with client(handler, clock=clock) as api:
        await api.batch_status("merchant-7", "b1")
        clock.now += 3000  # 83% of the hour: the cached token is still good
        await api.batch_status("merchant-7", "b1")
        clock.now += 300  # 92%: less than a tenth left, a new one is minted
        await api.batch_status("merchant-7", "b1")
        clock.now -= 10_000  # the clock went backwards past the token's iat
        await api.batch_status("merchant-7", "b1")

    claims = [
        jwt.decode(t, SECRET, algorithms=["HS256"], options={"verify_exp": False}) for t in seen
    ]
    assert claims[0] == {
        "partnerId": "partner-1",
        "type": "partner",
        "iat": 1_700_000_000,
        "exp": 1_700_003_600,
    }
    assert seen[0] == seen[1] != seen[2]
    assert claims[2]["iat"] == 1_700_003_300
    assert claims[3]["iat"] == 1_699_993_300


def test_partner_tokens_are_the_ones_pyjwt_would_sign_byte_for_byte() -> None:
    claims: dict[str, str | int] = {
        "partnerId": "partner-ü-1",
        "type": "partner",
        "iat": 1_700_000_000,
        "exp": 1_700_003_600,
    }
    assert hs256_token(claims, SECRET) == jwt.encode(claims, SECRET, algorithm="HS256")
    assert hs256_token(claims, "another-secret-0123456789-abcdefgh") != hs256_token(claims, SECRET)


async def test_a_401_drops_the_cached_token() -> None:
    clock = FakeClock(1_700_000_000.0)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(401 if len(seen) == 1 else 200, json={"message": "x"})

    async with client(handler, clock=clock) as api:
        with pytest.raises(ConfigurationError):
            await api.upsert_one("merchant-1", "customers", {"customerId": "c1"})
        clock.now += 5
        await api.upsert_one("merchant-1", "customers", {"customerId": "c1"})
    assert seen[0] != seen[1]


async def test_static_key_and_before_request_hook() -> None:
    seen: list[RequestInfo] = []
    headers: list[str] = []

    async def before(info: RequestInfo) -> None:
        seen.append(info)

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers["authorization"])
        if request.url.path.endswith("/batch"):
            return accepted("b1", len(resources(request)))
        return httpx.Response(200, json={"success": True, "data": {}})

    auth = Auth(mode="static", secret=SecretStr(STATIC_KEY), token_ttl_s=3600)
    api = ReachClient(
        destination(auth=auth), transport=httpx.MockTransport(handler), before_request=before
    )
    async with api:
        await api.upsert_one("merchant-1", "customers", {"customerId": "c1"})
        await api.upsert_batch("merchant-1", "customers", customers(3))
    assert headers == [f"Bearer {STATIC_KEY}"] * 2
    assert seen == [
        RequestInfo("merchant-1", "upsert_one", 1),
        RequestInfo("merchant-1", "upsert_batch", 3),
    ]
