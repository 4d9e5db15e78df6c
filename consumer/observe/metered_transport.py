"""The Reach client's transport, counted: each request and its answer, and what is in flight
(metrics.py's ``metered_transport`` makes one when metrics are on)."""

from __future__ import annotations

from typing import Protocol

import httpx

__all__ = ["MeteredTransport", "Traffic"]


class Traffic(Protocol):
    """What the counts go to: metrics.py's ``ReachTraffic`` (named by its shape here, so that
    metrics.py, which imports this module only when it makes a transport, is not imported back)."""

    def started(self, size: int) -> None: ...

    def finished(self, size: int, method: str, status: int | None, error: str | None) -> None: ...


class MeteredTransport(httpx.AsyncBaseTransport):
    """Counts each request and its answer, and what is in flight, around the real transport
    (inside the circuit breaker: a request the open circuit refuses never reaches here)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, traffic: Traffic) -> None:
        self._inner = inner
        self._traffic = traffic

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        size = int(request.headers.get("content-length") or 0)
        self._traffic.started(size)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException as exc:
            self._traffic.finished(size, request.method, None, type(exc).__name__)
            raise
        self._traffic.finished(size, request.method, response.status_code, None)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
