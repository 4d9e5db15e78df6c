"""A writer schema compiled into a reader that builds only what routing needs.

fastavro reads every field of a Debezium envelope into dicts: the source block's fifteen-odd
fields, every column of both images, about 30 µs an event here, twice the JSON path's whole
cost. Routing needs the op, four fields of the source block and the trigger columns of the
images; the rest only has to be stepped over. So a writer schema is compiled, once per schema
id, into one straight-line function per record (unions, arrays and maps as small steps): a
field that is kept is read into its value (as JsonConverter writes it: bytes as base64 text, a
32-bit float as Java prints it), a field that is not is skipped by its length alone.
``docs/benchmarks.md``, "Avro", has the figures.

A record whose fields are all primitives, ``["null", T]`` unions and nested records (every
Debezium envelope, key and row image) is read in C where the ``_avro_scan`` extension was built
(``_avro_scan.c``): the same plan of kept and skipped fields, walked without the interpreter,
about five times faster. Other shapes, and installs without the extension, use the generated
Python.

The compiled reader stands in for the whole decode only where it gives the same result, which
``tests/unit/test_avro_reader.py`` checks against fastavro over every Avro type, for both
readers; a message it cannot read (cut short, a bad union index) is read again by fastavro,
which says why.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

__all__ = [
    "CompiledReader",
    "Keep",
    "Scan",
    "Unreadable",
    "compile_reader",
    "float32_text",
    "full_name",
    "native_scan",
]

# A step reads one value at ``pos`` of ``buf``: (value, the position after it).
Read = Callable[[bytes, int], tuple[Any, int]]
# A step that steps over one value: the position after it.
Skip = Callable[[bytes, int], int]
# Which fields of a record to keep, by the record's full name and the field's name.
Keep = Callable[[str, str], bool]
# The C reader: scan(plan, buf, pos, float32) -> the record (_avro_scan.c says what a plan is).
Scan = Callable[[tuple[Any, ...], bytes, int, Callable[[float], float]], dict[str, Any]]

native_scan: Scan | None
try:
    from consumer.router._avro_scan import scan as native_scan
except ImportError:  # built without the C extension (no compiler at install): Python reads all
    native_scan = None

_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")


class Unreadable(Exception):
    """The bytes do not follow the writer schema (the caller reads them again to say why)."""


class CompiledReader:
    """Reads one writer schema's messages; ``read(buf, pos)`` gives the top-level value and
    raises Unreadable when the bytes do not end exactly with it."""

    def __init__(self, read: Read) -> None:
        self._read = read

    @property
    def native(self) -> bool:
        """Whether the C extension reads this schema's messages."""
        return False

    def read(self, buf: bytes, pos: int) -> Any:
        try:
            value, end = self._read(buf, pos)
        except (IndexError, UnicodeDecodeError, struct.error, KeyError) as exc:
            raise Unreadable(f"{type(exc).__name__}: {exc}") from exc
        if end != len(buf):
            raise Unreadable(f"{len(buf) - end} bytes left over after the record")
        return value


class _NativeReader(CompiledReader):
    """A plan walked by the C extension."""

    def __init__(self, scan: Scan, plan: tuple[Any, ...]) -> None:
        self._scan = scan
        self._plan = plan

    @property
    def native(self) -> bool:
        return True

    def read(self, buf: bytes, pos: int) -> Any:
        try:
            return self._scan(self._plan, buf, pos, float32_text)
        except ValueError as exc:  # UnicodeDecodeError is one
            raise Unreadable(f"{type(exc).__name__}: {exc}") from exc


def full_name(schema: Mapping[str, Any], namespace: str) -> tuple[str, str]:
    """A named type's full name, and the namespace its own fields resolve names in."""
    name = str(schema["name"])
    if "." in name:
        return name, name.rpartition(".")[0]
    space = str(schema.get("namespace", namespace) or "")
    return (f"{space}.{name}" if space else name), space


def compile_reader(
    schema: Any, keep: Keep | None = None, scan: Scan | None = native_scan
) -> CompiledReader:
    """Compile a writer schema (its JSON form, logical types already removed); records keep
    the fields ``keep`` says (all when None), and skip the others. ``scan`` is the C reader
    (None: generated Python only); it serves the schemas a plan can describe."""
    if scan is not None:
        plan = _Planner(keep).top(schema)
        if plan is not None:
            return _NativeReader(scan, plan)
    return CompiledReader(_Compiler(keep).read(schema, ""))


# --- primitives --------------------------------------------------------------------------------


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    byte = buf[pos]
    pos += 1
    if byte < 0x80:  # most Debezium ints fit in one byte's seven bits
        return (byte >> 1) ^ -(byte & 1), pos
    value, shift = byte & 0x7F, 7
    while byte & 0x80:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if shift > 70:
            raise IndexError("a varint longer than ten bytes")
    if value >> 64:
        raise IndexError("a varint beyond 64 bits")
    return (value >> 1) ^ -(value & 1), pos


def _skip_long(buf: bytes, pos: int) -> int:
    start = pos
    while buf[pos] & 0x80:
        pos += 1
    if pos - start > 9 or (pos - start == 9 and buf[pos] > 1):
        raise IndexError("a varint beyond 64 bits")
    return pos + 1


def _length(buf: bytes, pos: int) -> tuple[int, int]:
    size, pos = _read_long(buf, pos)
    if size < 0 or pos + size > len(buf):
        raise IndexError(f"a length of {size} at {pos} past the end")
    return size, pos


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    byte = buf[pos]
    if not byte & 0x81:  # one byte, even: a length below 64 (most of Debezium's strings)
        end = pos + 1 + (byte >> 1)
        if end > len(buf):
            raise IndexError("a string past the end")
        return buf[pos + 1 : end].decode("utf-8"), end
    size, pos = _length(buf, pos)
    end = pos + size
    return buf[pos:end].decode("utf-8"), end


def _read_bytes(buf: bytes, pos: int) -> tuple[str, int]:
    """Bytes as JsonConverter writes them: base64 text."""
    size, pos = _length(buf, pos)
    end = pos + size
    return base64.b64encode(buf[pos:end]).decode("ascii"), end


def _skip_sized(buf: bytes, pos: int) -> int:
    """Past a string or bytes. Not bounds-checked: a skip past the end fails the reader's check
    that the record ends exactly at the end of the message."""
    byte = buf[pos]
    if not byte & 0x81:  # one byte, even: a length below 64 (odd ones are negative)
        return pos + 1 + (byte >> 1)
    size, pos = _read_long(buf, pos)
    if size < 0:
        raise IndexError(f"a negative length at {pos}")
    return pos + size


def _read_boolean(buf: bytes, pos: int) -> tuple[bool, int]:
    byte = buf[pos]
    if byte > 1:
        raise IndexError(f"a boolean byte {byte}")
    return byte == 1, pos + 1


def _read_float(buf: bytes, pos: int) -> tuple[float, int]:
    (value,) = _FLOAT.unpack_from(buf, pos)
    return float32_text(value), pos + 4


def _read_double(buf: bytes, pos: int) -> tuple[float, int]:
    (value,) = _DOUBLE.unpack_from(buf, pos)
    return value, pos + 8


def _read_null(buf: bytes, pos: int) -> tuple[None, int]:
    return None, pos


def _skip_null(buf: bytes, pos: int) -> int:
    return pos


def _skip_fixed_size(size: int) -> Skip:
    def skip(buf: bytes, pos: int) -> int:
        if pos + size > len(buf):
            raise IndexError("fixed past the end")
        return pos + size

    return skip


def float32_text(value: float) -> float:
    """The shortest decimal that is the same 32-bit float: what Java's Float.toString prints."""
    if not math.isfinite(value):
        return value
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if _FLOAT.unpack(_FLOAT.pack(candidate))[0] == value:
            return candidate
    return value


_READ: dict[str, Read] = {
    "null": _read_null,
    "boolean": _read_boolean,
    "int": _read_long,
    "long": _read_long,
    "float": _read_float,
    "double": _read_double,
    "bytes": _read_bytes,
    "string": _read_string,
}
_SKIP: dict[str, Skip] = {
    "null": _skip_null,
    "boolean": _skip_fixed_size(1),
    "int": _skip_long,
    "long": _skip_long,
    "float": _skip_fixed_size(4),
    "double": _skip_fixed_size(8),
    "bytes": _skip_sized,
    "string": _skip_sized,
}


# --- the plan of the C reader -------------------------------------------------------------------

# _avro_scan.c's kinds.
_KIND = {
    "null": 0,
    "boolean": 1,
    "int": 2,
    "long": 2,
    "float": 3,
    "double": 4,
    "bytes": 5,
    "string": 6,
}
_RECORD = 7


class _Unplannable(Exception):
    """A shape the C reader does not walk (enum, fixed, array, map, a wider union, a record
    that refers to itself): the generated Python reads the schema."""


class _Planner:
    """A record schema as the C reader's plan: per field (key or None to skip, kind, nullable,
    the nested record's plan)."""

    def __init__(self, keep: Keep | None) -> None:
        self._keep = keep
        self._plans: dict[str, tuple[Any, ...] | None] = {}  # None: being planned

    def top(self, schema: Any) -> tuple[Any, ...] | None:
        if not isinstance(schema, dict) or schema.get("type") not in ("record", "error"):
            return None
        try:
            return self._record(schema, "")
        except (_Unplannable, KeyError, TypeError, ValueError):
            return None

    def _record(self, schema: Mapping[str, Any], namespace: str) -> tuple[Any, ...]:
        full, space = full_name(schema, namespace)
        if full in self._plans:
            raise _Unplannable(f"{full} is defined twice or refers to itself")
        self._plans[full] = None
        fields = []
        for field in schema["fields"]:
            name = str(field["name"])
            kind, nullable, sub = self._type(field["type"], space)
            kept = self._keep is None or self._keep(full, name)
            fields.append((name if kept else None, kind, nullable, sub))
        plan = tuple(fields)
        self._plans[full] = plan
        return plan

    def _type(self, schema: Any, space: str) -> tuple[int, bool, tuple[Any, ...] | None]:
        if isinstance(schema, list):
            if len(schema) != 2 or schema[0] != "null" or schema[1] == "null":
                raise _Unplannable("a union other than [null, T]")
            kind, nullable, sub = self._type(schema[1], space)
            if nullable:
                raise _Unplannable("a union in a union")
            return kind, True, sub
        primitive = _primitive(schema)
        if primitive is not None:
            return _KIND[primitive], False, None
        if isinstance(schema, dict) and schema.get("type") in ("record", "error"):
            return _RECORD, False, self._record(schema, space)
        if isinstance(schema, str):
            for full in (f"{space}.{schema}" if space and "." not in schema else schema, schema):
                plan = self._plans.get(full)
                if plan is not None:
                    return _RECORD, False, plan
                if full in self._plans:
                    raise _Unplannable(f"{full} refers to itself")
        raise _Unplannable(f"{schema!r}")


# --- the compiler ------------------------------------------------------------------------------


class _Compiler:
    """Walks a schema once, resolving named types, into read and skip steps."""

    def __init__(self, keep: Keep | None) -> None:
        self._keep = keep
        self._named: dict[str, Any] = {}  # full name -> the schema, for references
        self._reads: dict[str, Read] = {}
        self._skips: dict[str, Skip] = {}

    def read(self, schema: Any, namespace: str) -> Read:
        if isinstance(schema, str):
            if schema in _READ:
                return _READ[schema]
            return _compiled(self._reads, self._resolve(schema, namespace))
        if isinstance(schema, list):
            return self._union_read([self.read(b, namespace) for b in schema])
        kind = schema["type"]
        if kind in _NAMED:
            # A named type written out in place is compiled once, though both its read and its
            # skip are asked for (a field's read and skip both start from its schema).
            done = self._reads.get(self._define(schema, namespace, again=True))
            if done is not None:
                return done
        if kind == "record" or kind == "error":
            return self._record_read(schema, namespace)
        if kind == "enum":
            full = self._define(schema, namespace)
            symbols = tuple(schema["symbols"])
            read: Read = lambda buf, pos: _enum(symbols, buf, pos)  # noqa: E731
            self._reads[full], self._skips[full] = read, _skip_long
            return read
        if kind == "fixed":
            full = self._define(schema, namespace)
            size = int(schema["size"])
            fixed: Read = lambda buf, pos: _fixed(size, buf, pos)  # noqa: E731
            self._reads[full], self._skips[full] = fixed, _skip_fixed_size(size)
            return fixed
        if kind == "array":
            item = self.read(schema["items"], namespace)
            return lambda buf, pos: _array(item, buf, pos)
        if kind == "map":
            value = self.read(schema["values"], namespace)
            return lambda buf, pos: _map(value, buf, pos)
        return self.read(kind, namespace)

    def skip(self, schema: Any, namespace: str) -> Skip:
        if isinstance(schema, str):
            if schema in _SKIP:
                return _SKIP[schema]
            return _compiled(self._skips, self._resolve(schema, namespace))
        if isinstance(schema, list):
            branches = [self.skip(b, namespace) for b in schema]
            if len(branches) == 2 and branches[0] is _skip_null:
                return _nullable_skip(branches[1], branches)
            return lambda buf, pos: _union_skip(branches, buf, pos)
        kind = schema["type"]
        if kind in _NAMED:
            self.read(schema, namespace)  # defines it, and its skip
            return self._skips[self._define(schema, namespace, again=True)]
        if kind == "array":
            item = self.skip(schema["items"], namespace)
            return lambda buf, pos: _blocks_skip(item, None, buf, pos)
        if kind == "map":
            value = self.skip(schema["values"], namespace)
            return lambda buf, pos: _blocks_skip(value, _skip_sized, buf, pos)
        return self.skip(kind, namespace)

    def _record_read(self, schema: Mapping[str, Any], namespace: str) -> Read:
        """A record's read and skip, each generated as one straight-line function: its fields
        of primitive types (and [null, primitive] unions) inline, others through their steps.
        Only numbers and structure are written into the code; names and constants are bound
        as values (``K0``...), never spliced in as text."""
        full = self._define(schema, namespace)
        space = full.rpartition(".")[0]
        bound: dict[str, Any] = dict(_HELPERS)
        read_code, skip_code = ["v = {}"], []
        for n, f in enumerate(schema.get("fields", [])):
            bound[f"K{n}"] = str(f["name"])
            skips = self._skip_code(f["type"], space, n, bound)
            skip_code += skips
            if self._keep is None or self._keep(full, str(f["name"])):
                read_code += self._read_code(f["type"], space, n, bound, f"v[K{n}]")
            else:
                read_code += skips
        read_code.append("return v, pos")
        skip_code.append("return pos")
        source = "\n".join(
            [
                "def read(buf, pos):",
                *(f"    {line}" for line in read_code),
                "def skip(buf, pos):",
                *(f"    {line}" for line in skip_code),
            ]
        )
        exec(compile(source, f"<avro record {full}>", "exec"), bound)  # noqa: S102 - docstring
        read: Read = bound["read"]
        self._reads[full], self._skips[full] = read, bound["skip"]
        return read

    def _skip_code(self, schema: Any, space: str, n: int, bound: dict[str, Any]) -> list[str]:
        primitive = _primitive(schema)
        if primitive is not None:
            return list(_SKIP_CODE[primitive])
        inner = _nullable_primitive(schema)
        if inner is not None:
            branch = [f"    {line}" for line in _SKIP_CODE[inner]] or ["    pass"]
            return ["b = buf[pos]", "pos += 1", "if b == 2:", *branch, "elif b:", "    BAD(b)"]
        bound[f"S{n}"] = self.skip(schema, space)
        return [f"pos = S{n}(buf, pos)"]

    def _read_code(
        self, schema: Any, space: str, n: int, bound: dict[str, Any], target: str
    ) -> list[str]:
        primitive = _primitive(schema)
        if primitive is not None:
            return [line.replace("T", target) for line in _READ_CODE[primitive]]
        inner = _nullable_primitive(schema)
        if inner is not None:
            branch = [f"    {line.replace('T', target)}" for line in _READ_CODE[inner]]
            return [
                "b = buf[pos]",
                "pos += 1",
                "if b == 2:",
                *branch,
                "elif b:",
                "    BAD(b)",
                "else:",
                f"    {target} = None",
            ]
        bound[f"R{n}"] = self.read(schema, space)
        return [f"{target}, pos = R{n}(buf, pos)"]

    def _define(self, schema: Mapping[str, Any], namespace: str, again: bool = False) -> str:
        full = full_name(schema, namespace)[0]
        if not again:
            self._named[full] = schema
        return full

    def _resolve(self, name: str, namespace: str) -> str:
        for full in (f"{namespace}.{name}" if namespace else name, name):
            if full in self._named:
                return full
        raise KeyError(f"unknown named type {name!r}")

    @staticmethod
    def _union_read(branches: list[Read]) -> Read:
        if len(branches) == 2 and branches[0] is _read_null:  # Debezium's [null, T]
            other = branches[1]

            def nullable(buf: bytes, pos: int) -> tuple[Any, int]:
                index = buf[pos]
                if index == 0:
                    return None, pos + 1
                if index == 2:  # zigzag 1
                    return other(buf, pos + 1)
                return _union(branches, buf, pos)

            return nullable
        return lambda buf, pos: _union(branches, buf, pos)


_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def _primitive(schema: Any) -> str | None:
    if isinstance(schema, dict) and set(schema) - {"type"} <= _ANNOTATIONS:
        schema = schema.get("type")
    return schema if isinstance(schema, str) and schema in _PRIMITIVES else None


# What a primitive's schema may carry besides its type (Connect's names, parameters).
_ANNOTATIONS = frozenset(
    {
        "connect.name",
        "connect.version",
        "connect.parameters",
        "connect.default",
        "connect.doc",
        "scale",
        "precision",
        "doc",
        "default",
    }
)


def _nullable_primitive(schema: Any) -> str | None:
    if isinstance(schema, list) and len(schema) == 2 and schema[0] == "null":
        inner = _primitive(schema[1])
        return inner if inner != "null" else None
    return None


def _bad_union(index: int) -> None:
    raise IndexError(f"union index byte {index}")


_HELPERS: dict[str, Any] = {
    "RL": _read_long,
    "SS": _skip_sized,
    "SL": _skip_long,
    "RS": _read_string,
    "RB": _read_bytes,
    "RBO": _read_boolean,
    "RF": _read_float,
    "RD": _read_double,
    "BAD": _bad_union,
}
# The inline code of each primitive, reading into ``T`` or stepping over it.
_READ_CODE: dict[str, tuple[str, ...]] = {
    "null": ("T = None",),
    "boolean": ("T, pos = RBO(buf, pos)",),
    "int": (
        "b = buf[pos]",
        "if b < 128:",
        "    T = (b >> 1) ^ -(b & 1)",
        "    pos += 1",
        "else:",
        "    T, pos = RL(buf, pos)",
    ),
    "float": ("T, pos = RF(buf, pos)",),
    "double": ("T, pos = RD(buf, pos)",),
    "bytes": ("T, pos = RB(buf, pos)",),
    "string": ("T, pos = RS(buf, pos)",),
}
_READ_CODE["long"] = _READ_CODE["int"]
_SKIP_CODE: dict[str, tuple[str, ...]] = {
    "null": (),
    "boolean": ("pos += 1",),
    "int": ("if buf[pos] < 128:", "    pos += 1", "else:", "    pos = SL(buf, pos)"),
    "float": ("pos += 4",),
    "double": ("pos += 8",),
    "bytes": (
        "b = buf[pos]",
        "if not b & 129:",
        "    pos += 1 + (b >> 1)",
        "else:",
        "    pos = SS(buf, pos)",
    ),
}
_SKIP_CODE["long"] = _SKIP_CODE["int"]
_SKIP_CODE["string"] = _SKIP_CODE["bytes"]


def _union(branches: list[Read], buf: bytes, pos: int) -> tuple[Any, int]:
    index, pos = _read_long(buf, pos)
    return branches[index](buf, pos) if 0 <= index < len(branches) else _no_branch(index)


_NAMED = frozenset({"record", "error", "enum", "fixed"})


_Step = TypeVar("_Step", Read, Skip)


def _compiled(steps: Mapping[str, _Step], full: str) -> _Step:
    """A named type's read or skip; while the type is still being compiled (a record that
    refers to itself), one that looks it up when it is called."""
    found = steps.get(full)
    if found is not None:
        return found
    return cast(_Step, lambda buf, pos: steps[full](buf, pos))


def _nullable_skip(other: Skip, branches: list[Skip]) -> Skip:
    """Past a [null, T] union: its index is one byte, 0 or 2 (zigzag 1)."""

    def skip(buf: bytes, pos: int) -> int:
        index = buf[pos]
        if index == 0:
            return pos + 1
        if index == 2:
            return other(buf, pos + 1)
        return _union_skip(branches, buf, pos)

    return skip


def _union_skip(branches: list[Skip], buf: bytes, pos: int) -> int:
    index, pos = _read_long(buf, pos)
    return branches[index](buf, pos) if 0 <= index < len(branches) else _no_branch(index)


def _no_branch(index: int) -> Any:
    raise IndexError(f"union index {index}")


def _enum(symbols: tuple[str, ...], buf: bytes, pos: int) -> tuple[str, int]:
    index, pos = _read_long(buf, pos)
    if not 0 <= index < len(symbols):
        raise IndexError(f"enum index {index}")
    return symbols[index], pos


def _fixed(size: int, buf: bytes, pos: int) -> tuple[str, int]:
    end = pos + size
    if end > len(buf):
        raise IndexError("fixed past the end")
    return base64.b64encode(buf[pos:end]).decode("ascii"), end


def _block_count(buf: bytes, pos: int) -> tuple[int, int]:
    """A block's item count; a negative one is followed by the block's size in bytes."""
    count, pos = _read_long(buf, pos)
    if count < 0:
        count = -count
        _, pos = _read_long(buf, pos)
    return count, pos


def _array(item: Read, buf: bytes, pos: int) -> tuple[list[Any], int]:
    values: list[Any] = []
    count, pos = _block_count(buf, pos)
    while count:
        for _ in range(count):
            value, pos = item(buf, pos)
            values.append(value)
        count, pos = _block_count(buf, pos)
    return values, pos


def _map(value_read: Read, buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
    values: dict[str, Any] = {}
    count, pos = _block_count(buf, pos)
    while count:
        for _ in range(count):
            key, pos = _read_string(buf, pos)
            values[key], pos = value_read(buf, pos)
        count, pos = _block_count(buf, pos)
    return values, pos


def _blocks_skip(item: Skip, key: Skip | None, buf: bytes, pos: int) -> int:
    count, pos = _block_count(buf, pos)
    while count:
        for _ in range(count):
            if key is not None:
                pos = key(buf, pos)
            pos = item(buf, pos)
        count, pos = _block_count(buf, pos)
    return pos
