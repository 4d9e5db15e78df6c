"""Logging: structured JSON lines with trace ids, and one redaction layer for everything logged.

Redaction is a logging filter on the handler, so it sees every record from every library
(librdkafka's lines included) after its message is formatted, and no call site has to remember
it. It removes, from the message and any exception text:

- the definition's own secrets by value (every ``SecretStr``: the Reach key or JWT secret, the
  DSN and Redis URL, the passwords inside them, and librdkafka passwords), wherever they appear;
- anything shaped like a credential: ``Bearer <token>``, a JWT, ``user:password@`` in a URL;
- e-mail addresses: a customer's e-mail is PII the mapping may send to Reach, never to a log.

Format: JSON lines when the output is not a terminal (a log pipeline reads them), readable text
on a terminal; ``REACH_SYNC_LOG_FORMAT=json|text`` chooses explicitly.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, Literal
from urllib.parse import urlsplit

import orjson
from opentelemetry import trace
from pydantic import BaseModel, SecretStr

__all__ = [
    "JsonFormatter",
    "Redactor",
    "configure_logging",
    "definition_secrets",
]

MASK = "***"
# Secrets shorter than this are not replaced by value (a 2-character password would blank out
# every occurrence of those letters); the patterns below still apply.
MIN_SECRET_LENGTH = 6

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {MASK}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), MASK),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*):[^\s@/]+@"), rf"\1:{MASK}@"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "<email>"),
)
_SECRET_SETTING = re.compile(r"(?i)(password|secret|token|credential)")


class Redactor(logging.Filter):
    """Rewrites each record's message (and exception text) with secrets and PII removed."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True
        )

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the active trace ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info is not None:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(
    level: int,
    secrets: Iterable[str] = (),
    *,
    fmt: Literal["json", "text"] | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install reach-sync's redacting handler on the root logger (replacing the one an earlier
    call installed); return it."""
    chosen = fmt or _format_from_environment(stream or sys.stderr)
    handler = _Handler(stream)
    handler.addFilter(Redactor(secrets))
    if chosen == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call; others' (a test runner's) stay
        if isinstance(old, _Handler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """reach-sync's own handler, told apart so that configuring again replaces only it.

    Without a stream of its own it writes to whatever ``sys.stderr`` is at the time, not the one
    it was created with (a test runner swaps and closes those)."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__(stream or sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def _format_from_environment(out: IO[str]) -> Literal["json", "text"]:
    wanted = os.environ.get("REACH_SYNC_LOG_FORMAT", "").lower()
    if wanted in ("json", "text"):
        return "json" if wanted == "json" else "text"
    return "text" if out.isatty() else "json"


def definition_secrets(model: BaseModel) -> list[str]:
    """Every secret value in a (definition) model: SecretStr fields, the passwords inside
    secret URLs, and librdkafka settings whose names say they are credentials."""
    return sorted(set(_secrets_in(model)))


def _secrets_in(value: object) -> Iterator[str]:
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        yield secret
        password = _url_password(secret)
        if password:
            yield password
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets_in(getattr(value, name))
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and isinstance(key, str) and _SECRET_SETTING.search(key):
                yield item
            else:
                yield from _secrets_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secrets_in(item)


def _url_password(text: str) -> str | None:
    if "://" not in text:
        return _keyword_password(text)
    try:
        return urlsplit(text).password
    except ValueError:
        return None


def _keyword_password(dsn: str) -> str | None:
    """``password=...`` in a libpq keyword DSN."""
    match = re.search(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
    return match.group(1).strip("'") if match else None
