"""What a failed Reach request means: one table from an answer or a transport error to the
error tree of ``consumer.errors`` (docs/reach-api.md §7 Q4, Q11).

The engine decides by class alone (retry later, dead-letter, stop the tenant), so the table is
in one place and carries what each decision needs: ``retry_after_s`` for a retry, the status
and a bounded body excerpt for a dead letter, the status and a scope for a person. 404 and the
4xx of bad data depend on what the request carried, hence ``Call``.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import httpx
import orjson

from consumer.errors import BadRecord, ConfigurationError, Retryable, SyncError

__all__ = ["MAX_BODY_EXCERPT", "Call", "classify", "read_json", "retry_after_seconds"]

# A dead letter keeps this much of Reach's answer: enough to act on, bounded (2 KB).
MAX_BODY_EXCERPT = 2048
# The server's message inside an exception message.
_MAX_MESSAGE_EXCERPT = 300


class Call(Enum):
    """What a request carried; the same status means different things for each."""

    SINGLE = "a single record"
    BATCH = "a batch of records"
    STATUS = "a batch status read"


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is taken as such
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN or infinite
        return None
    return max(0.0, seconds)


def _excerpt(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _server_message(response: httpx.Response) -> str:
    body = read_json(response)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return _excerpt(body["message"], _MAX_MESSAGE_EXCERPT)
    return _excerpt(response.text.strip(), _MAX_MESSAGE_EXCERPT) or "(empty body)"


def read_json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


# Transport failures that happen before a request reaches Reach: it cannot have applied it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def classify(
    outcome: httpx.Response | Exception,
    call: Call,
    redact: Callable[[str], str],
    external_id: str | None = None,
    *,
    request: str = "request",
) -> SyncError:
    """The one table from a failed request (a non-2xx answer or a transport error) to the
    error tree. ``redact`` removes credentials from anything that ends up in a message;
    ``request`` names a failed transport's request (``"POST /api/..."``) in it."""
    if isinstance(outcome, Exception):
        return _transport_error(outcome, redact, request)

    status = outcome.status_code
    request_line = f"{outcome.request.method} {outcome.request.url.path}"
    said = redact(f"Reach {request_line} answered {status}: {_server_message(outcome)}")
    wait = retry_after_seconds(outcome.headers.get("retry-after"))
    if status == 429:
        return Retryable(said, retry_after_s=wait)
    if status >= 500 or status in (408, 425):
        # Reach had the request: it may have applied it before the answer went wrong.
        return Retryable(said, retry_after_s=wait, ambiguous=True)
    if status in (401, 403):
        return ConfigurationError(said, status=status, scope="tenant or credential")
    if status == 404:
        if call is Call.STATUS:
            # A batch id Reach gave us and no longer knows: its outcome is unknown, so the
            # engine's wait deadline decides, as for a batch that never finishes.
            return Retryable(said)
        return ConfigurationError(said, status=status, scope="schema")
    if status in (400, 409, 413, 422) and call is not Call.STATUS:
        body = read_json(outcome)
        if external_id is None and isinstance(body, dict) and isinstance(body.get("errors"), list):
            named = [e.get("externalId") for e in body["errors"] if isinstance(e, dict)]
            external_id = next((e for e in named if isinstance(e, str)), None)
        excerpt = redact(outcome.content[:MAX_BODY_EXCERPT].decode("utf-8", "replace"))
        return BadRecord(said, status=status, body=excerpt, external_id=external_id)
    # Redirects and other 4xx: the client and the API disagree; a person has to look.
    return ConfigurationError(said, status=status, scope="api contract")


def _transport_error(exc: Exception, redact: Callable[[str], str], request: str) -> SyncError:
    """A request that got no answer; whether Reach may have applied it is what the engine
    needs to know (``Retryable.ambiguous``)."""
    kind = type(exc).__name__
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ConfigurationError(redact(f"Reach base_url is unusable ({request}): {exc}"))
    ambiguous = not isinstance(exc, _NOT_SENT)
    if isinstance(exc, httpx.TimeoutException):
        return Retryable(redact(f"Reach {request} timed out ({kind})"), ambiguous=ambiguous)
    if isinstance(exc, httpx.HTTPError):
        message = f"Reach {request} failed, no answer ({kind}: {exc})"
        return Retryable(redact(message), ambiguous=ambiguous)
    return Retryable(redact(f"Reach {request} failed ({kind})"), ambiguous=ambiguous)
