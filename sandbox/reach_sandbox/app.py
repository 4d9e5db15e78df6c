"""The ASGI application: routes, the request guard, error rendering, start-up and shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from reach_sandbox.admin import admin_routes
from reach_sandbox.api_batches import batch_routes
from reach_sandbox.api_resources import resource_routes
from reach_sandbox.config import SandboxConfig
from reach_sandbox.guard import Guard
from reach_sandbox.http import ApiError, JsonResponse, error_body
from reach_sandbox.partner import partner_routes
from reach_sandbox.state import Sandbox

__all__ = ["build_app"]

_log = logging.getLogger(__name__)


async def _api_error(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ApiError):
        raise exc
    return JsonResponse(error_body(exc.message, exc.errors), exc.status, headers=exc.headers)


async def _http_error(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):
        raise exc
    return JsonResponse(error_body(str(exc.detail)), exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    _log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JsonResponse(error_body("internal sandbox error"), 500)


def build_app(config: SandboxConfig, state_dir: Path) -> Starlette:
    """An app whose state lives in ``state_dir``; it opens the database in its lifespan."""
    sandbox = Sandbox(config, state_dir)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sandbox.start()
        try:
            yield
        finally:
            await sandbox.stop()

    app = Starlette(
        routes=[*admin_routes(), *partner_routes(), *batch_routes(), *resource_routes()],
        middleware=[Middleware(Guard, sandbox=sandbox)],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    return app
