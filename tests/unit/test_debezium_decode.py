"""Decoding real Debezium output (shared fixture) and the malformed events around it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumer.router.debezium import Change, DecodeError, Ignored, decode_event, decode_key

FIXTURE = Path(__file__).parents[1] / "fixtures/debezium/postgres-json-with-schemas.jsonl"


def _records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def _bytes(part: Any) -> bytes | None:
    return None if part is None else orjson.dumps(part)


def _without_schemas(part: Any) -> Any:
    return part["payload"] if isinstance(part, dict) and "payload" in part else part


def _decoded(strip_schemas: bool) -> list[Change | Ignored]:
    out = []
    for record in _records():
        key, value = record["key"], record["value"]
        if strip_schemas:
            key, value = _without_schemas(key), _without_schemas(value)
        out.append(decode_event(_bytes(key), _bytes(value)))
    return out


@pytest.mark.parametrize("strip_schemas", [False, True], ids=["with-schemas", "without-schemas"])
def test_the_fixture_decodes_the_same_with_and_without_schemas(strip_schemas: bool) -> None:
    events = _decoded(strip_schemas)
    changes = [e for e in events if isinstance(e, Change)]
    ignored = [e.reason for e in events if isinstance(e, Ignored)]

    assert [(c.table, c.op, c.key["id"]) for c in changes] == [
        ("public.customers", "c", 102),
        ("public.transactions", "c", 302),
        ("public.transactions", "u", 302),
        ("public.customers", "u", 102),
        ("public.customers", "u", 102),
        ("public.transactions", "u", 5),
        ("public.transactions", "d", 6),
        ("public.customers", "u", 7),
        ("public.customers", "c", 5000),
        ("public.customers", "d", 5000),
        ("public.customers", "c", 100000),
    ]
    assert ignored.count("tombstone") == 2
    assert ignored.count("transaction-metadata") == 18
    assert all(c.lsn and c.source_ts_ms for c in changes)


def test_decoding_with_and_without_schemas_agrees() -> None:
    assert _decoded(strip_schemas=False) == _decoded(strip_schemas=True)


def test_a_default_identity_delete_keeps_only_the_key_trustworthy() -> None:
    delete = next(e for e in _decoded(False) if isinstance(e, Change) and e.op == "d")
    # The quirk the sync must not trust: a NOT NULL column arrives with Debezium's default.
    assert delete.after is None
    assert delete.before is not None and delete.before["created_at"].startswith("1970-01-01")
    assert delete.key == {"id": 6}


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b'{"id":1}', b"not json", "not a Debezium envelope"),
        (
            b'{"id":1}',
            b'{"op":"x","source":{"schema":"public","table":"t"},"after":{}}',
            "unknown op",
        ),
        (b'{"id":1}', b'{"op":"c","after":{"id":1}}', "no source"),
        (b'{"id":1}', b'{"op":"u","source":{"schema":"public","table":"t"}}', "without its after"),
        (b'{"id":1}', b'{"op":"d","source":{"schema":"public","table":"t"}}', "without its before"),
        (None, b'{"op":"c","source":{"schema":"public","table":"t"},"after":{"id":1}}', "no key"),
        (b"[1]", b'{"op":"c","source":{"schema":"public","table":"t"},"after":{"id":1}}', "key"),
        (b'{"id":1}', b'{"payload": 3}', "not a Debezium envelope"),
        (b'{"id":1}', b'{"before": {"id": 1}}', "no op"),
    ],
)
def test_malformed_events_raise_with_a_reason(key: bytes | None, value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_event(key, value)


def test_heartbeat_truncate_and_message_are_ignored_by_name() -> None:
    assert decode_event(b'{"serverName":"shop"}', b'{"ts_ms": 1}') == Ignored("heartbeat")
    truncate = b'{"op":"t","source":{"schema":"public","table":"customers"}}'
    assert decode_event(None, truncate) == Ignored("truncate")
    assert decode_event(None, b'{"op":"m","source":{}}') == Ignored("message")


def test_decode_key_accepts_both_shapes() -> None:
    assert decode_key(b'{"schema":{"type":"struct"},"payload":{"id":7}}') == {"id": 7}
    assert decode_key(b'{"id":7,"region":"eu"}') == {"id": 7, "region": "eu"}


def test_a_key_that_only_looks_wrapped_is_read_as_columns_or_refused() -> None:
    # A table whose key column is named "schema": no payload, so these are its columns.
    assert decode_key(b'{"schema":"public","id":7}') == {"schema": "public", "id": 7}
    with pytest.raises(DecodeError, match="payload is not an object"):
        decode_key(b'{"schema":{"type":"struct"},"payload":null}')
    with pytest.raises(DecodeError, match="not JSON"):
        decode_key(b'{"schema":{"type":')
