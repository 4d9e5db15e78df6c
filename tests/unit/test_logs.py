"""The redaction layer and the JSON log format: what may never reach a log, and the shape."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from consumer.observe.logs import MASK, configure_logging, definition_secrets
from tests.shop_definition import shop_definition

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJyZWFjaC1zeW5jIiwiaWF0IjoxNzAwMDAwMDAwfQ."
    "c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_definitions_secrets_are_found_including_passwords_inside_urls() -> None:
    definition = shop_definition(
        REACH_SYNC_DATABASE_URL="postgresql://reach:db-pass-123@127.0.0.1:5432/shop",
        REACH_SYNC_REDIS_URL="redis://:redis-pass-456@127.0.0.1:6379/0",
        REACH_SYNC_JWT_SECRET="jwt-secret-789",
    )
    secrets = definition_secrets(definition)
    assert {"db-pass-123", "redis-pass-456", "jwt-secret-789"} <= set(secrets)
    assert "postgresql://reach:db-pass-123@127.0.0.1:5432/shop" in secrets


def test_secrets_tokens_and_emails_never_reach_the_log(captured: io.StringIO) -> None:
    definition = shop_definition(
        REACH_SYNC_DATABASE_URL="host=127.0.0.1 user=reach password=kw-pass-321 dbname=shop",
        REACH_SYNC_JWT_SECRET="jwt-secret-789",
    )
    configure_logging(logging.INFO, definition_secrets(definition), fmt="json", stream=captured)
    log = logging.getLogger("test.redaction")
    log.warning("connecting with %s", "host=127.0.0.1 user=reach password=kw-pass-321")
    log.warning("signing with jwt-secret-789 for ada.lovelace@example.com")
    log.warning("sent Authorization: Bearer %s", JWT)
    log.warning("redis at redis://default:other-pass@10.0.0.1:6379/0")
    try:
        raise ValueError("refused token " + JWT + " for grace@example.org")
    except ValueError:
        log.exception("request failed")
    text = captured.getvalue()
    for leaked in ("kw-pass-321", "jwt-secret-789", "ada.lovelace", "grace@", JWT, "other-pass"):
        assert leaked not in text, leaked
    messages = [line["message"] for line in _lines(captured)]
    assert messages[1] == f"signing with {MASK} for <email>"
    assert messages[2] == f"sent Authorization: Bearer {MASK}"
    assert messages[3] == f"redis at redis://default:{MASK}@10.0.0.1:6379/0"
    assert "ValueError: refused token" in str(_lines(captured)[4]["exception"])


def test_json_lines_carry_the_active_trace_and_span(captured: io.StringIO) -> None:
    configure_logging(logging.INFO, fmt="json", stream=captured)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("window") as span:
        logging.getLogger("test.trace").info("inside")
    logging.getLogger("test.trace").info("outside")
    inside, outside = _lines(captured)
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert inside["level"] == "info" and inside["logger"] == "test.trace"
    assert "trace_id" not in outside


def test_short_secrets_are_not_replaced_by_value(captured: io.StringIO) -> None:
    configure_logging(logging.INFO, ["ab"], fmt="text", stream=captured)
    logging.getLogger("test.short").info("a cab at the lab")
    assert "a cab at the lab" in captured.getvalue()
