"""Everything a partner or API request passes before its route, as one ASGI middleware.

In order: a request id, authentication, the tenant (``/api/*``), rate limits, injected faults,
then the route; and whatever happened, one request-log row. Doing this as raw ASGI rather than in
each route is what lets a timeout fault cut a connection mid-response and an ``after_apply``
error fault run the route and then throw its answer away.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reach_sandbox.auth import Principal, resolve_tenant
from reach_sandbox.http import ApiError, error_body
from reach_sandbox.registry import Tenant
from reach_sandbox.requestlog import LogEntry
from reach_sandbox.state import Sandbox

__all__ = ["Guard", "send_error"]

_GUARDED = ("/api/", "/partner/")
# The declared length of a response a "drop" timeout fault abandons: the client sees the headers
# and then the connection closing before this many body bytes arrive.
_DROP_DECLARED_LENGTH = b"64"


async def send_error(send: Send, exc: ApiError, extra: dict[str, str] | None = None) -> None:
    body = orjson.dumps(error_body(exc.message, exc.errors))
    headers = {**(extra or {}), **exc.headers}
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_GUARDED):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["arrived_at"] = time.time()
        extra = {"x-request-id": request_id}
        status = [0]

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.lower().encode(), v.encode()) for k, v in extra.items()),
                ]
            await send(message)

        principal: Principal | None = None
        tenant: Tenant | None = None
        try:
            principal = self.sandbox.auth.authenticate(_header(scope, b"authorization"))
            tenant = self._tenant(scope, principal)
            state["principal"], state["tenant"] = principal, tenant
            decision = self.sandbox.limiter.check(
                principal.credential, tenant.id if tenant else None, time.monotonic()
            )
            extra.update(decision.headers)
            if not decision.allowed:
                raise ApiError(429, "rate limit exceeded")
            await self._call(scope, receive, tracked, tenant)
        except ApiError as exc:
            await send_error(tracked, exc)
        except Exception:
            status[0] = status[0] or 500  # the outer error middleware answers 500
            raise
        finally:
            self.sandbox.request_log.append(
                LogEntry(
                    at=state["arrived_at"],
                    method=scope["method"],
                    path=scope["path"],
                    tenant_id=tenant.id if tenant else None,
                    status=status[0],
                    records=state.get("record_count"),
                    duration_ms=round((time.perf_counter() - started) * 1000, 3),
                    request_id=request_id,
                    credential=principal.credential if principal else None,
                )
            )

    def _tenant(self, scope: Scope, principal: Principal) -> Tenant | None:
        if not scope["path"].startswith("/api/"):
            if principal.kind == "tenant_jwt":
                raise ApiError(403, "/partner routes need a partner-scoped token")
            return None
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in (b"reach-tenant-id", b"x-tenant-id")
        }
        return resolve_tenant(principal, headers, self.sandbox.registry, self.sandbox.config.auth)

    async def _call(
        self, scope: Scope, receive: Receive, send: Send, tenant: Tenant | None
    ) -> None:
        """Apply whatever faults fire for this request around the route."""
        fired = self.sandbox.faults.for_request(tenant, scope["path"], scope["method"])
        if fired.latency_s > 0:
            await asyncio.sleep(fired.latency_s)
        if fired.timeout is not None:
            await asyncio.sleep(fired.timeout.seconds)
            if fired.timeout.drop:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-length", _DROP_DECLARED_LENGTH)],
                    }
                )
                return  # the server closes the connection: the response never completes
            raise ApiError(504, "injected timeout")
        if fired.storm is not None:
            wait = str(fired.storm.retry_after_seconds)
            raise ApiError(429, "rate limit exceeded", headers={"Retry-After": wait})
        error = fired.error
        if error is None:
            await self.app(scope, receive, send)
            return
        if error.after_apply:
            await self.app(scope, receive, _discard)
        headers = (
            {}
            if error.retry_after_seconds is None
            else {"Retry-After": str(error.retry_after_seconds)}
        )
        raise ApiError(error.status, error.message, headers=headers)


async def _discard(_message: Message) -> None:
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
