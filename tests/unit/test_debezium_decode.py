"""Decoding real Debezium output (shared fixture) and the malformed events around it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumer.router.debezium import (
    Change,
    DecodeError,
    EventDecoder,
    Ignored,
    decode_event,
    decode_key,
)

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


# --- the router's decoder: the schema block skipped by its prefix, images cut to what it reads --


def _wire(record: dict[str, Any]) -> tuple[bytes | None, bytes | None, str]:
    return _bytes(record["key"]), _bytes(record["value"]), record["topic"]


def test_the_router_decoder_reads_every_fixture_event_as_decode_event_does_twice_over() -> None:
    decoder = EventDecoder()
    records = _records()
    for _ in range(2):  # the second time, every topic's schema prefix is known
        for record in records:
            key, value, topic = _wire(record)
            assert decoder.decode(key, value, topic) == decode_event(key, value)
    schemaful = sum(1 for r in records if r["value"] and r["value"].get("schema"))
    assert schemaful > 20
    # All but the first of each topic's and schema's events took the shortcut.
    assert decoder.shortcuts >= 2 * schemaful - len({r["topic"] for r in records}) * 2


def test_the_router_decoder_keeps_only_the_columns_its_triggers_read() -> None:
    decoder = EventDecoder({"public.transactions": ("customer_id", "not_a_column")})
    changes = []
    for record in _records():
        change = decoder.decode(*_wire(record))
        if isinstance(change, Change) and change.table == "public.transactions":
            changes.append(change)
    assert changes
    for change in changes:
        for image in (change.before, change.after):
            assert image is None or image.keys() == {"customer_id", "not_a_column"}
            assert image is None or image["not_a_column"] is None
        assert "id" in change.key  # the key is whole
    update = next(c for c in changes if c.op == "u" and c.after is not None)
    whole = decode_event(*_wire(next(r for r in _records() if _key_id(r) == update.key["id"]))[:2])
    assert isinstance(whole, Change) and whole.after is not None
    assert update.after == {"customer_id": whole.after["customer_id"], "not_a_column": None}


def _key_id(record: dict[str, Any]) -> Any:
    key = record["key"]
    return key["payload"]["id"] if key and "payload" in key else None


def _first_change(table: str) -> dict[str, Any]:
    return next(
        r
        for r in _records()
        if r["value"] and r["value"]["payload"].get("op") and table in r["topic"]
    )


def _primed(
    columns: dict[str, tuple[str, ...]] | None = None,
) -> tuple[dict[str, Any], EventDecoder]:
    """The first customers change, and a decoder that has read it: its topic's blocks known."""
    record = _first_change("customers")
    decoder = EventDecoder(columns)
    decoder.decode(*_wire(record))
    return record, decoder


def test_a_new_schema_block_on_a_known_topic_is_decoded_whole_and_then_remembered() -> None:
    record, decoder = _primed()
    key, value, topic = _wire(record)
    changed = json.loads(json.dumps(record))
    changed["value"]["schema"]["name"] = "shop.public.customers.Envelope.v2"
    changed["value"]["payload"]["after"]["email"] = "new@example.com"
    new_key, new_value, _ = _wire(changed)
    shortcuts = []
    for _ in range(2):
        decoded = decoder.decode(new_key, new_value, topic)
        shortcuts.append(decoder.shortcuts)
        assert decoded == decode_event(new_key, new_value)
        assert isinstance(decoded, Change) and decoded.after is not None
        assert decoded.after["email"] == "new@example.com"
    assert shortcuts == [0, 1]  # decoded whole, then known
    assert decoder.decode(key, value, topic) == decode_event(key, value)
    assert decoder.shortcuts == 2  # the first block is still known too


def test_a_message_that_only_starts_like_a_known_prefix_is_judged_whole() -> None:
    record, decoder = _primed()
    key, value, topic = _wire(record)
    assert value is not None
    payload_at = value.index(b',"payload":') + len(b',"payload":')
    prefix = value[:payload_at]
    # Two payloads: the slice after the prefix is not one JSON value, so the whole message is
    # decoded, and the last payload wins, as it does without the prefix.
    twice = prefix + value[payload_at:-1] + b',"payload":{"ts_ms":1}}'
    assert decoder.decode(key, twice, topic) == decode_event(key, twice) == Ignored("heartbeat")
    with pytest.raises(DecodeError, match="not a Debezium envelope"):
        decoder.decode(key, prefix + b'{"op":}', topic)
    assert key is not None
    key_at = key.index(b',"payload":') + len(b',"payload":')
    with pytest.raises(DecodeError, match="payload is not an object"):
        decoder.decode(key[:key_at] + b"null}", value, topic)


def test_a_value_or_key_nested_too_deeply_is_refused_not_raised_past_the_router() -> None:
    """msgspec raises RecursionError, not a DecodeError, for nesting deeper than it follows; let
    through, it stopped the router, and the restarted router on the same event, for good."""
    record = _first_change("customers")
    key, value, topic = _wire(record)
    assert key is not None and value is not None
    nested = b"[" * 100_000 + b"]" * 100_000
    deep_value = value.replace(b'"email":', b'"deep":' + nested + b',"email":', 1)
    deep_key = b'{"id":1,"path":' + nested + b"}"
    for decoder in (EventDecoder(), EventDecoder({"public.customers": ["email"]})):
        with pytest.raises(DecodeError, match="not a Debezium envelope"):
            decoder.decode(key, deep_value, topic)
        decoder.decode(key, value, topic)  # the topic's schema prefix is known from now on
        with pytest.raises(DecodeError, match="not a Debezium envelope"):
            decoder.decode(key, deep_value, topic)
        with pytest.raises(DecodeError, match="the key is not JSON"):
            decoder.decode(deep_key, value, topic)
    with pytest.raises(DecodeError):
        decode_event(key, deep_value)


# --- one pass: the envelope and the images typed for the table a schema block came with -------

_SHOP_COLUMNS = {"public.customers": ("id",), "public.transactions": ("id", "customer_id")}
_CUSTOMER_IDS = {"public.customers": ("id",)}


def _projected(event: Change | Ignored, columns: dict[str, tuple[str, ...]]) -> Change | Ignored:
    """``decode_event``'s result with the images cut to ``columns``, as the router keeps them."""
    if not isinstance(event, Change) or event.table not in columns:
        return event
    names = columns[event.table]

    def cut(image: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if image is None else {n: image.get(n) for n in names}

    return Change(
        event.table,
        event.op,
        event.key,
        cut(event.before),
        cut(event.after),
        event.source_ts_ms,
        event.lsn,
    )


def test_known_events_are_decoded_in_one_pass_with_the_general_paths_result() -> None:
    decoder = EventDecoder(_SHOP_COLUMNS)
    records = _records()
    for _ in range(3):
        for record in records:
            key, value, topic = _wire(record)
            expected = _projected(decode_event(key, value), _SHOP_COLUMNS)
            assert decoder.decode(key, value, topic) == expected
    changes = sum(
        1 for r in records if r["value"] and r["value"]["payload"].get("op") in ("c", "u", "d", "r")
    )
    # All but the first change of each topic, from the second round on at the latest.
    assert decoder.one_pass >= 2 * changes


def test_another_table_behind_a_known_schema_block_is_decoded_as_its_own() -> None:
    """A routing SMT can put shards with one schema behind one block: the block was learned
    with one table, and an event of another must not get that table's name or columns."""
    record, decoder = _primed(_CUSTOMER_IDS)
    key, value, topic = _wire(record)
    shard = json.loads(json.dumps(record))
    shard["value"]["payload"]["source"]["table"] = "customers_eu"
    shard_key, shard_value, _ = _wire(shard)
    decoded = decoder.decode(shard_key, shard_value, topic)
    assert decoded == decode_event(shard_key, shard_value)
    assert isinstance(decoded, Change) and decoded.table == "public.customers_eu"
    assert decoded.after is not None and "email" in decoded.after  # whole: no columns asked
    assert decoder.one_pass == 0
    assert decoder.decode(key, value, topic) == _projected(decode_event(key, value), _CUSTOMER_IDS)
    assert decoder.one_pass == 1


def test_a_known_event_with_a_mistyped_envelope_field_is_refused_as_before() -> None:
    record, decoder = _primed(_CUSTOMER_IDS)
    topic = record["topic"]
    for field, bad in (("ts_ms", "soon"), ("status", 5), ("op", 1)):
        broken = json.loads(json.dumps(record))
        broken["value"]["payload"][field] = bad
        broken_key, broken_value, _ = _wire(broken)
        with pytest.raises(DecodeError):
            decode_event(broken_key, broken_value)
        with pytest.raises(DecodeError):
            decoder.decode(broken_key, broken_value, topic)
    broken = json.loads(json.dumps(record))
    broken["value"]["payload"]["after"] = [1]
    with pytest.raises(DecodeError, match="after image is not an object"):
        decoder.decode(*_wire(broken))


def test_a_block_first_seen_on_a_truncate_is_decoded_in_one_pass_after_a_row_change() -> None:
    record = _first_change("customers")
    truncate = json.loads(json.dumps(record))
    truncate["value"]["payload"].update(op="t", before=None, after=None)
    decoder = EventDecoder(_CUSTOMER_IDS)
    key, value, topic = _wire(record)
    assert decoder.decode(*_wire(truncate)) == Ignored("truncate")
    for _ in range(2):
        assert decoder.decode(key, value, topic) == _projected(
            decode_event(key, value), _CUSTOMER_IDS
        )
    assert decoder.one_pass == 1


@pytest.mark.parametrize(
    "odd",
    [{"first name": "Ada"}, {"__dict__": True}, {"_rev": 3, "class": "x"}],
    ids=["a-space", "a-name-structs-reserve", "underscore-and-keyword"],
)
def test_columns_that_are_not_plain_python_names_are_kept_by_their_own_names(
    odd: dict[str, Any],
) -> None:
    record = _first_change("customers")
    record["value"]["payload"]["after"].update(odd)
    decoder = EventDecoder({"public.customers": (*odd, "id")})
    key, value, topic = _wire(record)
    for _ in range(2):
        decoded = decoder.decode(key, value, topic)
        assert isinstance(decoded, Change) and decoded.after is not None
        assert decoded.after == {**odd, "id": decoded.key["id"]}
    assert decoder.one_pass == 1


def test_a_bare_key_under_a_known_value_block_is_read_by_the_general_path() -> None:
    record, decoder = _primed(_CUSTOMER_IDS)
    _, value, topic = _wire(record)
    bare = _bytes(_without_schemas(record["key"]))
    assert decoder.decode(bare, value, topic) == _projected(
        decode_event(bare, value), _CUSTOMER_IDS
    )
    assert decoder.one_pass == 0
