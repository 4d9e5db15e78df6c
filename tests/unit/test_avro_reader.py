"""The compiled Avro reader against fastavro: the same values for every Avro type (as
JsonConverter writes them), only the kept fields of projected records, and refusal of bytes
that do not follow the schema."""

from __future__ import annotations

import base64
import io
import random
import struct
from typing import Any

import fastavro
import pytest

from consumer.router.avro import _converter  # the fastavro path's conversion, the reference
from consumer.router.avro_reader import Unreadable, compile_reader

SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Everything",
    "namespace": "test.ns",
    "fields": [
        {"name": "n", "type": "null"},
        {"name": "flag", "type": "boolean"},
        {"name": "small", "type": "int"},
        {
            "name": "big",
            "type": {"type": "long", "connect.name": "io.debezium.time.MicroTimestamp"},
        },
        {"name": "ratio", "type": "float"},
        {"name": "share", "type": "double"},
        {"name": "blob", "type": "bytes"},
        {"name": "text", "type": "string"},
        {"name": "maybe_text", "type": ["null", "string"], "default": None},
        {"name": "maybe_long", "type": ["null", "long"], "default": None},
        {"name": "maybe_blob", "type": ["null", "bytes"], "default": None},
        {"name": "maybe_float", "type": ["null", "float"], "default": None},
        {"name": "either", "type": ["null", "string", "long", "bytes"], "default": None},
        {"name": "mood", "type": {"type": "enum", "name": "Mood", "symbols": ["calm", "busy"]}},
        {"name": "again", "type": "Mood"},
        {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "floats", "type": {"type": "array", "items": "float"}},
        {"name": "attrs", "type": {"type": "map", "values": ["null", "bytes"]}},
        {
            "name": "inner",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Inner",
                    "fields": [
                        {"name": "id", "type": "long"},
                        {"name": "note", "type": ["null", "string"], "default": None},
                        {"name": "raw", "type": "bytes"},
                    ],
                },
            ],
            "default": None,
        },
        {"name": "inner_again", "type": ["null", "test.ns.Inner"], "default": None},
        {
            "name": "chain",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Link",
                    "fields": [
                        {"name": "value", "type": "int"},
                        {"name": "next", "type": ["null", "Link"], "default": None},
                    ],
                },
            ],
            "default": None,
        },
    ],
}


def _float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _text(rng: random.Random) -> str:
    alphabet = "abcxyz é✓\u0000" + "".join(chr(c) for c in range(0x4E00, 0x4E08))
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 63, 64, 200])))


def _bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 3, 63, 64, 300]))


def _long(rng: random.Random) -> int:
    return rng.choice([0, -1, 1, 63, -64, 64, 2**31 - 1, -(2**31), 2**62, -(2**63), 2**63 - 1])


def _link(rng: random.Random, depth: int) -> dict[str, Any] | None:
    if depth == 0 or rng.random() < 0.3:
        return None
    return {"value": rng.randrange(-1000, 1000), "next": _link(rng, depth - 1)}


def _value(rng: random.Random) -> dict[str, Any]:
    inner = {"id": _long(rng), "note": rng.choice([None, _text(rng)]), "raw": _bytes(rng)}
    return {
        "n": None,
        "flag": rng.random() < 0.5,
        "small": rng.randrange(-(2**31), 2**31),
        "big": _long(rng),
        "ratio": _float32(rng.uniform(-1e6, 1e6)),
        "share": rng.uniform(-1e300, 1e300),
        "blob": _bytes(rng),
        "text": _text(rng),
        "maybe_text": rng.choice([None, _text(rng)]),
        "maybe_long": rng.choice([None, _long(rng)]),
        "maybe_blob": rng.choice([None, _bytes(rng)]),
        "maybe_float": rng.choice([None, _float32(1.1), _float32(rng.random())]),
        "either": rng.choice([None, _text(rng), _long(rng), _bytes(rng)]),
        "mood": rng.choice(["calm", "busy"]),
        "again": rng.choice(["calm", "busy"]),
        "hash": rng.randbytes(4),
        "tags": [_text(rng) for _ in range(rng.choice([0, 1, 70]))],
        "floats": [_float32(rng.random()) for _ in range(rng.choice([0, 3]))],
        "attrs": {_text(rng): rng.choice([None, _bytes(rng)]) for _ in range(rng.choice([0, 2]))},
        "inner": rng.choice([None, inner]),
        "inner_again": rng.choice([None, inner]),
        "chain": _link(rng, 5),
    }


def _encode(value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00\x00\x00\x00\x01")
    fastavro.schemaless_writer(out, fastavro.parse_schema(SCHEMA), value)
    return out.getvalue()


def _reference(raw: bytes) -> Any:
    """fastavro's read, converted as the fastavro path converts it."""
    parsed = fastavro.parse_schema(SCHEMA)
    value = fastavro.schemaless_reader(io.BytesIO(raw[5:]), parsed, None)
    convert = _converter(SCHEMA, {}, "")
    return value if convert is None else convert(value)


@pytest.mark.parametrize("seed", range(40))
def test_every_type_reads_as_fastavro_reads_it_converted(seed: int) -> None:
    raw = _encode(_value(random.Random(seed)))
    assert compile_reader(SCHEMA).read(raw, 5) == _reference(raw)


def test_values_are_jsonconverters_bytes_as_base64_and_floats_as_java_prints_them() -> None:
    value = _value(random.Random(1))
    value.update(blob=b"\x00\xff", ratio=_float32(1.1), hash=b"abcd", either=b"\x01")
    read = compile_reader(SCHEMA).read(_encode(value), 5)
    assert read["blob"] == base64.b64encode(b"\x00\xff").decode()
    assert read["ratio"] == 1.1 and read["hash"] == "YWJjZA==" and read["either"] == "AQ=="


def test_a_projected_record_keeps_only_its_kept_fields_and_reads_the_rest_past() -> None:
    rng = random.Random(7)
    for _ in range(20):
        raw = _encode(_value(rng))
        whole = _reference(raw)

        def keep(record: str, field: str) -> bool:
            if record == "test.ns.Everything":
                return field in ("big", "inner", "mood", "chain")
            if record == "test.ns.Inner":
                return field == "id"
            return True

        read = compile_reader(SCHEMA, keep).read(raw, 5)
        assert set(read) == {"big", "inner", "mood", "chain"}
        assert (read["big"], read["mood"], read["chain"]) == (
            whole["big"],
            whole["mood"],
            whole["chain"],
        )
        assert read["inner"] == (None if whole["inner"] is None else {"id": whole["inner"]["id"]})


def test_blocks_with_a_byte_size_are_read_as_their_items() -> None:
    # An array written in two blocks, the first with a negative count and its size in bytes,
    # as the Java writer may do; fastavro reads it as one list.
    schema = {"type": "array", "items": "long"}
    zig = {1: b"\x02", 2: b"\x04", 3: b"\x06", -2: b"\x03", 0: b"\x00", 4: b"\x08"}
    raw = b"\x00\x00\x00\x00\x01" + zig[-2] + zig[2] + zig[1] + zig[2] + zig[1] + zig[3] + zig[0]
    assert fastavro.schemaless_reader(io.BytesIO(raw[5:]), schema, None) == [1, 2, 3]
    assert compile_reader(schema).read(raw, 5) == [1, 2, 3]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw: raw[:-1],
        lambda raw: raw[: len(raw) // 2],
        lambda raw: raw + b"\x00",
        lambda raw: raw[:5] + b"\x04" + raw[6:],  # flag: a boolean byte of 4
    ],
    ids=["one byte short", "half", "a byte left over", "a bad boolean"],
)
def test_bytes_that_do_not_follow_the_schema_are_unreadable(mangle: Any) -> None:
    raw = _encode(_value(random.Random(3)))
    with pytest.raises(Unreadable):
        compile_reader(SCHEMA).read(mangle(raw), 5)


def test_a_bad_union_index_is_unreadable() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "x", "type": ["null", "string"]}, {"name": "y", "type": "long"}],
    }
    for keep in (None, lambda record, field: field == "y"):
        reader = compile_reader(schema, keep)
        with pytest.raises(Unreadable):
            reader.read(b"\x00\x00\x00\x00\x01\x06\x02", 5)  # branch 3 of 2
