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
from consumer.router.avro_reader import Unreadable, compile_reader, native_scan
from tests.avro_readers import READERS

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


# --- the C reader (_avro_scan.c) against the generated Python ------------------------------------
#
# Debezium's shapes: records of primitives, [null, T] unions and nested records, one of them
# referred to by name. Both readers must give fastavro's values, keep the same fields, and refuse
# the same bytes; the C one must never read past its buffer, whatever the bytes say.

PLAIN: dict[str, Any] = {
    "type": "record",
    "name": "Envelope",
    "namespace": "shop.public.t",
    "fields": [
        {
            "name": "before",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Value",
                    "fields": [
                        {"name": "id", "type": "long"},
                        {"name": "small", "type": "int"},
                        {"name": "flag", "type": ["null", "boolean"], "default": None},
                        {"name": "ratio", "type": ["null", "float"], "default": None},
                        {"name": "share", "type": "double"},
                        {"name": "blob", "type": ["null", "bytes"], "default": None},
                        {"name": "text", "type": {"type": "string", "connect.name": "x.Y"}},
                        {"name": "maybe", "type": ["null", "string"], "default": None},
                        {"name": "n", "type": "null"},
                    ],
                },
            ],
            "default": None,
        },
        {"name": "after", "type": ["null", "Value"], "default": None},
        {
            "name": "source",
            "type": {
                "type": "record",
                "name": "Source",
                "namespace": "io.debezium",
                "fields": [
                    {"name": "version", "type": "string"},
                    {"name": "schema", "type": "string"},
                    {"name": "table", "type": "string"},
                    {"name": "lsn", "type": ["null", "long"], "default": None},
                ],
            },
        },
        {"name": "op", "type": "string"},
    ],
}


def _plain_row(rng: random.Random) -> dict[str, Any]:
    return {
        "id": _long(rng),
        "small": rng.randrange(-(2**31), 2**31),
        "flag": rng.choice([None, True, False]),
        "ratio": rng.choice([None, _float32(1.1), _float32(rng.uniform(-1e6, 1e6))]),
        "share": rng.uniform(-1e300, 1e300),
        "blob": rng.choice([None, _bytes(rng), b"", b"\x00", b"\x00\xff"]),
        "text": _text(rng),
        "maybe": rng.choice([None, _text(rng)]),
        "n": None,
    }


def _plain(rng: random.Random) -> bytes:
    value = {
        "before": rng.choice([None, _plain_row(rng)]),
        "after": rng.choice([None, _plain_row(rng)]),
        "source": {
            "version": "2.7.3.Final",
            "schema": "public",
            "table": _text(rng),
            "lsn": rng.choice([None, _long(rng)]),
        },
        "op": rng.choice("crud"),
    }
    out = io.BytesIO()
    out.write(b"\x00\x00\x00\x00\x02")
    fastavro.schemaless_writer(out, fastavro.parse_schema(PLAIN), value)
    return out.getvalue()


def _plain_reference(raw: bytes) -> Any:
    value = fastavro.schemaless_reader(io.BytesIO(raw[5:]), fastavro.parse_schema(PLAIN), None)
    convert = _converter(PLAIN, {}, "")
    return value if convert is None else convert(value)


def _outcome(reader: Any, raw: bytes) -> Any:
    try:
        return reader.read(raw, 5)
    except Unreadable:
        return Unreadable


def test_debeziums_shapes_are_read_in_c_and_other_shapes_in_python() -> None:
    if native_scan is None:
        pytest.skip("the C extension is not built")
    assert compile_reader(PLAIN).native
    assert not compile_reader(PLAIN, scan=None).native
    assert not compile_reader(SCHEMA).native  # enums, fixed, arrays, maps, a wider union
    linked = {
        "type": "record",
        "name": "Link",
        "fields": [{"name": "next", "type": ["null", "Link"]}],
    }
    assert not compile_reader(linked).native  # a record that refers to itself
    assert not compile_reader({"type": "array", "items": "long"}).native


@READERS
@pytest.mark.parametrize("seed", range(30))
def test_debeziums_shapes_read_as_fastavro_reads_them(scan: Any, seed: int) -> None:
    raw = _plain(random.Random(seed))
    assert compile_reader(PLAIN, scan=scan).read(raw, 5) == _plain_reference(raw)


@READERS
def test_both_readers_keep_only_the_kept_fields(scan: Any) -> None:
    def keep(record: str, field: str) -> bool:
        if record == "shop.public.t.Envelope":
            return field != "before"
        if record == "io.debezium.Source":
            return field in ("table", "lsn")
        return field in ("id", "blob", "ratio")

    rng = random.Random(11)
    for _ in range(30):
        raw = _plain(rng)
        whole = _plain_reference(raw)
        read = compile_reader(PLAIN, keep, scan).read(raw, 5)
        after = whole["after"]
        assert read == {
            "after": None if after is None else {k: after[k] for k in ("id", "ratio", "blob")},
            "source": {"table": whole["source"]["table"], "lsn": whole["source"]["lsn"]},
            "op": whole["op"],
        }


def test_the_c_reader_refuses_every_cut_and_agrees_with_python_on_every_mangled_byte() -> None:
    """Every prefix of real messages is refused (nothing is read past the end), and messages
    with bytes overwritten at random are read alike or refused alike by both readers."""
    if native_scan is None:
        pytest.skip("the C extension is not built")
    rng = random.Random(5)
    c_reader, py_reader = compile_reader(PLAIN), compile_reader(PLAIN, scan=None)
    outcomes = {True: 0, False: 0}  # refused, read
    for _ in range(40):
        raw = _plain(rng)
        for end in range(5, len(raw)):
            assert _outcome(c_reader, raw[:end]) is Unreadable
        for _ in range(50):
            mangled = bytearray(raw)
            for _ in range(rng.choice([1, 2, 5])):
                mangled[rng.randrange(5, len(raw))] = rng.choice([0, 1, 2, 3, 0x7F, 0x80, 0xFF])
            read = _outcome(c_reader, bytes(mangled))
            outcomes[read is Unreadable] += 1
            # repr: a float's bytes mangled into NaN read alike, though NaN != NaN
            assert repr(read) == repr(_outcome(py_reader, bytes(mangled)))
    assert outcomes[True] > 100 and outcomes[False] > 100, outcomes  # both kinds were tried


@READERS
@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\x04", "a union index of 2"),
        (b"\x00\x02\x81\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", "a varint of eleven bytes"),
        (b"\x00\x00" + b"\x01", "a negative string length"),
        (b"\x00\x00" + b"\xfe\xff\xff\xff\x0f", "a length past the end"),
    ],
)
def test_bytes_no_writer_could_have_written_are_unreadable(
    scan: Any, body: bytes, why: str
) -> None:
    with pytest.raises(Unreadable):
        compile_reader(PLAIN, scan=scan).read(b"\x00\x00\x00\x00\x02" + body, 5)


def test_the_c_reader_refuses_a_varint_beyond_64_bits() -> None:
    if native_scan is None:
        pytest.skip("the C extension is not built")
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": "long"}]}
    reader = compile_reader(schema)
    top = b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # zigzag 2**64 - 2: the largest long
    assert reader.read(b"\x00" * 5 + top, 5) == {"x": 2**63 - 1}
    with pytest.raises(Unreadable):
        reader.read(b"\x00" * 5 + b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x03", 5)


@READERS
@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("string", b"\x03c"),  # length -2, which a one-byte read once took as 1
        ("bytes", b"\x03c"),
        ("long", b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x03"),  # zigzag 2**65 - 2
    ],
    ids=["a negative string length", "a negative bytes length", "a long beyond 64 bits"],
)
def test_a_value_no_writer_could_have_written_is_unreadable_not_read_as_something_else(
    scan: Any, field: str, body: bytes
) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": field}]}
    with pytest.raises(Unreadable):
        compile_reader(schema, scan=scan).read(b"\x00\x00\x00\x00\x01" + body, 5)
    # Stepped over rather than read: a field that is not kept, before one that is.
    schema["fields"].append({"name": "y", "type": "long"})
    with pytest.raises(Unreadable):
        compile_reader(schema, lambda _, name: name == "y", scan).read(
            b"\x00\x00\x00\x00\x01" + body + b"\x02", 5
        )
