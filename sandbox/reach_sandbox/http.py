"""The HTTP edge shared by every route: the response envelope, errors, bodies, query parameters.

Every answer, success or not, uses Reach's envelope ``{"success", "message", "data"}``; errors add
``errors: [{index?, externalId?, field?, message}]`` (docs/reach-api.md §7 Q4). Handlers raise
``ApiError`` and one exception handler renders it, so no route builds an error body by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "ApiError",
    "JsonResponse",
    "envelope",
    "error_body",
    "invalid",
    "parse_json",
    "query_bool",
    "query_choice",
    "query_int",
    "read_body",
    "read_json",
    "respond",
]

# An error body lists at most this many record errors; the count of all is in the message.
MAX_REPORTED_ERRORS = 100


class ApiError(Exception):
    """An answer other than success: status, message, and optionally per-record errors."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors or [])
        self.headers = dict(headers or {})


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def invalid(message: str, exc: ValidationError) -> ApiError:
    """A 400 listing every field pydantic refused, for bodies checked against a model."""
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
    ]
    return ApiError(400, message, errors)


def envelope(data: Any, message: str = "OK") -> dict[str, Any]:
    return {"success": True, "message": message, "data": data}


def error_body(message: str, errors: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "message": message}
    if errors:
        body["errors"] = list(errors[:MAX_REPORTED_ERRORS])
    return body


def respond(data: Any, status: int = 200, message: str = "OK") -> JsonResponse:
    return JsonResponse(envelope(data, message), status_code=status)


async def read_body(request: Request, cap: int) -> bytes:
    """The raw request body; 413 past ``cap`` bytes, checked while reading, not after."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise ApiError(413, f"request body exceeds {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiError(413, f"request body exceeds {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    if not raw:
        raise ApiError(400, "request body is empty; expected JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from exc


async def read_json(request: Request, cap: int) -> Any:
    return parse_json(await read_body(request, cap))


def query_bool(request: Request, name: str, default: bool) -> bool:
    """``true``/``false`` (any case); the docs declare some of these as strings, some as bools."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ApiError(400, f"query parameter {name} must be true or false, got {raw!r}")


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name} must be between {low} and {high}")
    return value


def query_choice(request: Request, name: str, default: str, choices: Sequence[str]) -> str:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise ApiError(400, f"query parameter {name} must be one of {', '.join(choices)}")
    return raw
