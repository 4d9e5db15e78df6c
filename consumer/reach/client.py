"""The one place that knows Reach: its request formats, its limits and what its answers mean.

The engine hands this client whole records and gets back named outcomes: accepted into a batch
(to be polled), rejected for good (dead-letter), or not sent with a classified error. Every
failure is classified once, by ``classify.classify``, into the error tree of
``consumer.errors``. The client never retries or sleeps on an error: backoff, pausing and rate
limiting are the engine's, and ``before_request`` is the seam where its limiter plugs in
without touching call sites.

A synchronous 400/422/413 on a batch is not an error of the batch but of some of its records:
the records the refusal names are rejected and the rest resubmitted; a refusal that names none
is bisected until each bad record stands alone (docs/reach-api.md §7 Q4, Q6).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx
from httpx_aiohttp import AiohttpTransport

from consumer.config import Destination
from consumer.errors import BadRecord, ConfigurationError, Retryable, SyncError
from consumer.observe.telemetry import instrument_http
from consumer.reach.auth import Clock, credential_for
from consumer.reach.batching import (
    DELETE_BODY,
    UPSERT_BODY,
    BatchSubmission,
    BodyShape,
    Item,
    RejectedRecord,
    SubmittedBatch,
    isolate,
    json_bytes,
    plan_chunks,
)
from consumer.reach.classify import Call, classify, read_json
from consumer.reach.schemas import (
    SCHEMAS_PATH,
    SchemaDefinition,
    parse_schema_definitions,
    schemas_refused,
)
from consumer.reach.status import (
    BatchProgress,
    BatchState,
    BatchStatus,
    RecordFailure,
    parse_status,
)
from consumer.reach.tenants import TenantCall, TenantInfo, Tenants

__all__ = [
    "DELETE_BATCH_TYPE",
    "UPSERT_BATCH_TYPE",
    "AfterResponse",
    "BatchProgress",
    "BatchState",
    "BatchStatus",
    "BatchSubmission",
    "BeforeRequest",
    "ReachClient",
    "RecordFailure",
    "RejectedRecord",
    "RequestInfo",
    "SchemaDefinition",
    "SubmittedBatch",
    "TenantInfo",
    "default_transport",
]

_log = logging.getLogger(__name__)

# docs/reach-api.md §7 Q8: at most 1000 externalIds per batch delete.
_MAX_DELETE_IDS = 1000
# Polls of one wait_batches call in flight at once, and how fast their interval grows.
_MAX_CONCURRENT_POLLS = 8
_POLL_GROWTH = 1.5
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # docs/reach-api.md §3.8: schema names
_USER_AGENT = "reach-sync/0.1"
# docs/reach-api.md §3.4: batchType of an upload and of a delete.
UPSERT_BATCH_TYPE = "PARTNER_RESOURCE_JSON_INGEST"
DELETE_BATCH_TYPE = "PARTNER_RESOURCE_BATCH_DELETE"
# How many of a tenant's newest batches are read to find one whose id an ambiguous answer lost:
# the sandbox's largest page; Reach documents neither a largest page nor the sortBy values
# (docs/reach-api.md §3.4, [OPEN]). That batch was created moments ago, so it is among them
# unless the tenant created more than this many batches of the type since.
_RECENT_BATCHES = 100
# What RequestInfo.tenant says for a partner call about no tenant (the schema definitions): the
# limiter then counts it as a tenant of its own, never as one of the partner's.
PARTNER_SCOPE = "(partner)"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a request is about to do, for the engine's rate limiter."""

    tenant: str
    operation: (
        Literal[
            "upsert_one",
            "upsert_batch",
            "delete_batch",
            "batch_status",
            "list_batches",
            "schema_definitions",
        ]
        | TenantCall
    )
    records: int


BeforeRequest = Callable[[RequestInfo], Awaitable[None]]
# Told every answer (429s and Retry-After included), so the limiter can slow down on its own.
AfterResponse = Callable[[RequestInfo, httpx.Response], None]


@dataclass(slots=True)
class _Step:
    """What one batch request led to: at most one of accepted or error, plus isolation."""

    accepted: SubmittedBatch | None = None
    rejected: list[RejectedRecord] = field(default_factory=list)
    again: list[list[Item]] = field(default_factory=list)
    error: SyncError | None = None


def _check_name(value: str, what: str) -> None:
    """Tenant and schema go into a header and a path; refuse what would corrupt either."""
    if what == "schema":
        ok = _NAME.match(value) is not None
    else:
        ok = bool(value) and value.isascii() and value.isprintable()
    if not ok:
        raise ConfigurationError(f"invalid Reach {what} name {value!r}", scope=what)


def default_transport(destination: Destination) -> httpx.AsyncBaseTransport:
    """aiohttp's connections under httpx's API, ``max_connections`` of them kept alive."""
    size = destination.max_connections
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    return AiohttpTransport(limits=limits)


# --- the client ----------------------------------------------------------------------------------


class ReachClient:
    """An async Reach API client for one destination; use as ``async with``.

    One keep-alive HTTP/1.1 connection pool and one cached credential serve every tenant; the
    tenant is per call. ``transport`` is the test seam, ``before_request`` the rate-limit seam,
    ``clock`` (epoch seconds) decides when the JWT is renewed.
    """

    def __init__(
        self,
        destination: Destination,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        before_request: BeforeRequest | None = None,
        after_response: AfterResponse | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._destination = destination
        self._credential = credential_for(destination.auth, clock)
        self._before_request = before_request
        self._after_response = after_response
        # Callers queue here, not in httpcore's pool: its waiter bookkeeping costs CPU that
        # grows with the number of waiters (measured: most of the event loop at ~400 waiting).
        self._slots = asyncio.Semaphore(destination.max_connections)
        self._http = httpx.AsyncClient(
            base_url=destination.base_url,
            transport=transport or default_transport(destination),
            timeout=httpx.Timeout(destination.timeout_s),
            headers={"user-agent": _USER_AGENT},
            follow_redirects=False,
        )
        instrument_http(self._http)  # a span per request, when tracing is on

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"ReachClient({self._destination.base_url!r})"

    # --- calls -----------------------------------------------------------------------------------

    async def upsert_one(
        self,
        tenant: str,
        schema: str,
        record: Mapping[str, Any],
        *,
        external_id: str | None = None,
    ) -> None:
        """Write one record synchronously (§3.5); raises the classified error if not accepted.

        ``external_id`` only labels a ``BadRecord``; Reach reads the id from the record.
        """
        _check_name(schema, "schema")
        try:
            body = json_bytes({"data": record})
        except TypeError as exc:
            message = f"record is not JSON-serialisable: {exc}"
            raise BadRecord(message, external_id=external_id) from exc
        if len(body) > self._destination.max_request_bytes:
            cap = self._destination.max_request_bytes
            raise BadRecord(f"record is {len(body)} bytes, over {cap}", external_id=external_id)
        response = await self._send(
            RequestInfo(tenant, "upsert_one", 1),
            "POST",
            f"/api/resources/{schema}",
            params={"onconflict": "upsert"},
            body=body,
        )
        if not response.is_success:
            raise self._error(response, Call.SINGLE, external_id)

    async def upsert_batch(
        self, tenant: str, schema: str, records: Mapping[str, Mapping[str, Any]]
    ) -> BatchSubmission:
        """Upsert ``records`` (external id -> full record) through the batch endpoint (§3.1).

        Split by ``batch_size`` and ``max_request_bytes``; refused records are isolated. Keyed by
        external id because every outcome is reported per id, and one call never holds two
        states of one entity.
        """
        _check_name(schema, "schema")
        items: list[Item] = []
        rejected: list[RejectedRecord] = []
        for key, record in records.items():
            try:
                items.append(Item(key, json_bytes(record)))
            except TypeError as exc:
                reason = f"record is not JSON-serialisable: {exc}"
                rejected.append(RejectedRecord(key, reason, None, None))
        params = {
            "onconflict": "upsert",
            "dependencyWaitTimeout": str(self._destination.dependency_wait_timeout_s),
        }
        info = RequestInfo(tenant, "upsert_batch", 0)
        path = f"/api/resources/{schema}/batch"
        return await self._submit_all(
            info, "POST", path, params, UPSERT_BODY, items, self._destination.batch_size, rejected
        )

    async def delete_batch(
        self, tenant: str, schema: str, external_ids: Iterable[str]
    ) -> BatchSubmission:
        """Delete by external id (§3.3, ``cascade`` off), at most 1000 ids per request."""
        _check_name(schema, "schema")
        ids = list(dict.fromkeys(external_ids))
        rejected = [RejectedRecord(i, "empty external id", None, None) for i in ids if not i]
        items = [Item(i, json_bytes(i)) for i in ids if i]
        info = RequestInfo(tenant, "delete_batch", 0)
        path = f"/api/resources/{schema}/batch"
        return await self._submit_all(
            info, "DELETE", path, None, DELETE_BODY, items, _MAX_DELETE_IDS, rejected
        )

    async def batch_status(self, tenant: str, batch_id: str) -> BatchStatus:
        """One reading of a batch (§3.4), parsed defensively; raises the classified error."""
        response = await self._send(
            RequestInfo(tenant, "batch_status", 0),
            "GET",
            f"/api/batches/{quote(batch_id, safe='')}",
            params={"includePendingDetails": "true"},
        )
        if not response.is_success:
            raise self._error(response, Call.STATUS)
        body = read_json(response)
        data = body.get("data") if isinstance(body, dict) else None
        return parse_status(batch_id, data)

    async def unfinished_batches(self, tenant: str, schema: str, batch_type: str) -> list[str]:
        """Ids of the tenant's newest ``schema`` batches of ``batch_type`` that are not finished
        (``GET /api/batches``, newest first). After a batch request whose answer was lost, Reach
        may hold a batch of it whose id was never learned; these are the ones to wait for."""
        response = await self._send(
            RequestInfo(tenant, "list_batches", 0),
            "GET",
            "/api/batches",
            params={
                "batchType": batch_type,
                "sortBy": "-createdAt",
                "limit": str(_RECENT_BATCHES),
            },
        )
        if not response.is_success:
            raise self._error(response, Call.STATUS)
        body = read_json(response)
        data = body.get("data") if isinstance(body, dict) else None
        results = data.get("results") if isinstance(data, dict) else None
        unfinished: list[str] = []
        for entry in results if isinstance(results, list) else []:
            if not isinstance(entry, dict) or entry.get("schemaName") not in (schema, None):
                continue
            batch_id = entry.get("batchId")
            finished = isinstance(batch_id, str) and parse_status(batch_id, entry).finished
            if isinstance(batch_id, str) and batch_id and not finished:
                unfinished.append(batch_id)
        return unfinished

    async def wait_batches(
        self,
        tenant: str,
        batch_ids: Iterable[str],
        *,
        poll_interval_s: float = 0.5,
        timeout_s: float = 60.0,
        max_poll_interval_s: float = 5.0,
    ) -> dict[str, BatchStatus]:
        """Poll until every batch is ``finished`` or ``timeout_s`` passes; the latest status of
        each either way, so a caller sees which are done. The interval grows from
        ``poll_interval_s`` to ``max_poll_interval_s``. A failed poll raises its classified
        error (polls are reads: the caller may simply call again)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        order = list(dict.fromkeys(batch_ids))
        latest: dict[str, BatchStatus] = {}
        waiting = order
        interval = poll_interval_s
        while waiting:
            latest.update(await self._poll(tenant, waiting))
            waiting = [b for b in waiting if not latest[b].finished]
            left = deadline - loop.time()
            if not waiting or left <= 0:
                break
            await asyncio.sleep(min(interval, left))
            interval = min(interval * _POLL_GROWTH, max(max_poll_interval_s, poll_interval_s))
        return {b: latest[b] for b in order}

    async def find_tenant(self, tenant: str) -> TenantInfo | None:
        """Reach's tenant named ``tenant`` (its external id or id, per ``tenant_id_mode``), or
        None: the pages of ``GET /partner/tenants`` are walked until it turns up (§3.7)."""
        return await self._tenants(tenant).find()

    async def mark_data_integration_complete(self, tenant: str, at: datetime) -> TenantInfo:
        """Tell Reach the tenant's historical data is in (``dataIntegrationCompletedAt`` = ``at``,
        §6 "Tenant flags"); a tenant Reach does not have is a ``ConfigurationError``."""
        return await self._tenants(tenant).mark_data_integration_complete(at)

    async def schema_definitions(self) -> list[SchemaDefinition]:
        """Every active schema definition of the partner (``GET /partner/schema-definitions``,
        §3.8), for checking a sync definition against them; raises the classified error."""
        response = await self._send(
            RequestInfo(PARTNER_SCOPE, "schema_definitions", 0), "GET", SCHEMAS_PATH, partner=True
        )
        if not response.is_success:
            error = self._error(response, Call.SINGLE)
            raise schemas_refused(response, error, static=self._destination.auth.mode == "static")
        return parse_schema_definitions(response)

    # --- plumbing --------------------------------------------------------------------------------

    async def _poll(self, tenant: str, batch_ids: list[str]) -> dict[str, BatchStatus]:
        gate = asyncio.Semaphore(_MAX_CONCURRENT_POLLS)

        async def one(batch_id: str) -> BatchStatus:
            async with gate:
                return await self.batch_status(tenant, batch_id)

        tasks = [asyncio.ensure_future(one(b)) for b in batch_ids]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one poll failed: stop the others, and let them finish
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return dict(zip(batch_ids, results, strict=True))

    async def _submit_all(
        self,
        info: RequestInfo,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        shape: BodyShape,
        items: list[Item],
        max_count: int,
        rejected: list[RejectedRecord],
    ) -> BatchSubmission:
        """Send ``items`` in chunks until each is accepted, rejected, or the call must stop.

        Work is a stack of chunks, and every step accepts, rejects or shrinks the chunk on top,
        so the loop ends; at the first error that is not about records it stops, and the chunk
        in hand and those behind it are reported unsent.
        """
        cap = self._destination.max_request_bytes
        chunks, oversize = plan_chunks(items, shape, max_count, cap)
        for item in oversize:
            reason = f"record is {len(item.json)} bytes; a request may carry at most {cap}"
            rejected.append(RejectedRecord(item.key, reason, None, None))
        batches: list[SubmittedBatch] = []
        work = deque(chunks)
        while work:
            chunk = work.popleft()
            step = await self._submit_chunk(info, method, path, params, shape, chunk)
            if step.error is not None:
                unsent = tuple(item.key for pending in (chunk, *work) for item in pending)
                sent = isinstance(step.error, Retryable) and step.error.ambiguous
                in_doubt = tuple(item.key for item in chunk) if sent else ()
                return BatchSubmission(
                    tuple(batches), tuple(rejected), unsent, step.error, in_doubt
                )
            if step.accepted is not None:
                batches.append(step.accepted)
            rejected.extend(step.rejected)
            work.extendleft(reversed(step.again))
        return BatchSubmission(tuple(batches), tuple(rejected))

    async def _submit_chunk(
        self,
        info: RequestInfo,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        shape: BodyShape,
        chunk: list[Item],
    ) -> _Step:
        """One request; a refusal about records becomes rejections and smaller chunks."""
        try:
            response = await self._send(
                RequestInfo(info.tenant, info.operation, len(chunk)),
                method,
                path,
                params=params,
                body=shape.render(chunk),
            )
        except SyncError as exc:
            return _Step(error=exc)
        keys = [item.key for item in chunk]
        if response.is_success:
            accepted = self._accepted(response, keys)
            if isinstance(accepted, SyncError):
                return _Step(error=accepted)
            return _Step(accepted=accepted)
        error = self._error(response, Call.BATCH)
        if not isinstance(error, BadRecord):
            return _Step(error=error)
        rejected, again = isolate(chunk, read_json(response), error)
        return _Step(rejected=rejected, again=again)

    def _accepted(self, response: httpx.Response, keys: list[str]) -> SubmittedBatch | SyncError:
        body = read_json(response)
        data = body.get("data") if isinstance(body, dict) else None
        batch_id = data.get("batchId") if isinstance(data, dict) else None
        if not isinstance(batch_id, str) or not batch_id:
            return ConfigurationError(
                f"Reach accepted a batch ({response.status_code}) without a batchId",
                status=response.status_code,
                scope="api contract",
            )
        count = data.get("recordCount") if isinstance(data, dict) else None
        record_count = count if type(count) is int else len(keys)
        return SubmittedBatch(batch_id, tuple(keys), record_count)

    def _tenants(self, tenant: str) -> Tenants:
        """The tenant calls, sent as partner calls: no reach-tenant-id header (§2.1), but the
        tenant's limiter and the same classification as every other request."""

        async def send(
            operation: TenantCall,
            method: str,
            path: str,
            params: Mapping[str, str] | None,
            body: bytes | None,
        ) -> httpx.Response:
            info = RequestInfo(tenant, operation, 0)
            return await self._send(info, method, path, params=params, body=body, partner=True)

        def refused(response: httpx.Response) -> SyncError:
            return self._error(response, Call.SINGLE)

        return Tenants(tenant, self._destination.tenant_id_mode, send, refused)

    async def _send(
        self,
        info: RequestInfo,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        partner: bool = False,
    ) -> httpx.Response:
        """One request with auth and tenant headers (``partner``: a /partner/* route, which
        takes no tenant header); transport failures raise classified."""
        _check_name(info.tenant, "tenant")
        if self._before_request is not None:
            await self._before_request(info)
        headers = {"authorization": f"Bearer {self._credential.bearer()}"}
        if not partner:
            headers["reach-tenant-id"] = info.tenant
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            async with self._slots:
                started = time.perf_counter()
                response = await self._http.request(
                    method, path, params=params, content=body, headers=headers
                )
        except httpx.HTTPError as exc:
            error = classify(exc, Call.SINGLE, self._redact, request=f"{method} {path}")
            raise error from exc
        if response.status_code == 401:
            self._credential.invalidate()  # the next call mints afresh (e.g. after clock skew)
        if self._after_response is not None:
            self._after_response(info, response)
        _log.debug(
            "reach %s %s -> %d (%s, %d records, %.0f ms)",
            method,
            path,
            response.status_code,
            info.tenant,
            info.records,
            (time.perf_counter() - started) * 1000,
        )
        return response

    def _error(
        self, response: httpx.Response, call: Call, external_id: str | None = None
    ) -> SyncError:
        return classify(response, call, self._redact, external_id)

    def _redact(self, text: str) -> str:
        for secret in self._credential.secrets():
            text = text.replace(secret, "***")
        return text
