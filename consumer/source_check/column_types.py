"""Which column types a format can read, and which can be an id: pure rules, no database.

A format meets a type it cannot read on every row: each record is dead-lettered, or worse,
sent wrong. The rules follow what projection.py reads: ``integer`` and ``decimal_cents`` whole
numbers (a fraction is refused), ``boolean`` a boolean or 0/1, ``datetime`` and ``date`` a date
or timestamp (a time of day has no date). The formats also read digit or ISO strings, but a
text column mapped to a number or a time is far more often the wrong column than a string of
digits: cast it in the query to say so. ``raw`` and ``string`` read anything.
"""

from __future__ import annotations

from consumer.source_check.catalog import ColumnType

__all__ = ["a_type", "format_problem", "id_problem", "is_moment"]

# pg_type.typcategory each format is meant for: N numeric, B boolean, D date/time.
_READABLE = {
    "integer": {"N"},
    "decimal_cents": {"N"},
    "decimal": {"N"},
    "boolean": {"B", "N"},
    "datetime": {"D"},
    "date": {"D"},
}
_INTEGERS = frozenset({"int2", "int4", "int8"})
_FLOATS = frozenset({"float4", "float8"})
# Of category D, the types that hold a day (time and timetz are a time of day alone).
_MOMENTS = frozenset({"date", "timestamp", "timestamptz"})


def format_problem(format_name: str, column: str, kind: ColumnType) -> str | None:
    """Why ``format_name`` cannot read ``column``, a ``kind``; None when it can."""
    readable = _READABLE.get(format_name)
    if readable is None:
        return None
    cannot = f"format {format_name} cannot read {column}, {a_type(kind)}"
    if kind.category not in readable or kind.name == "money":  # money loads as text: "$1.00"
        return f"{cannot}; map another column, or cast it in the query"
    if format_name in ("datetime", "date") and kind.name not in _MOMENTS:
        return (
            f"{cannot}: it holds no day; map a date, timestamp or timestamptz, or send it with "
            "format string"
        )
    fractional = kind.name in _FLOATS or (kind.name == "numeric" and (kind.scale or 0) > 0)
    if format_name == "integer" and fractional:
        return (
            f"{cannot}: it holds fractions, which integer refuses; use format decimal, or "
            f"round it in the query (round({column})::bigint)"
        )
    if format_name == "decimal_cents" and fractional:
        return (
            f"format decimal_cents reads whole cents, and {column} is {a_type(kind)}, an "
            f"amount with fractions: use format decimal (or send cents: ({column} * 100)::bigint)"
        )
    if format_name == "boolean" and kind.category == "N" and kind.name not in _INTEGERS:
        return f"{cannot}: boolean reads a boolean or an integer 0 or 1; compare it in the query"
    return None


def id_problem(column: str, kind: ColumnType) -> str | None:
    """Why ``column``, a ``kind``, cannot hold an id (an entity's or a tenant's); None when it
    can: integers, text, uuids and enums, whose text is the same on every path (a float's is
    not: 7 is "7.0")."""
    whole = kind.name in _INTEGERS | {"oid"} or (kind.name == "numeric" and not kind.scale)
    if whole or kind.category in ("S", "E") or kind.name == "uuid":
        return None
    if kind.name in ("json", "jsonb"):
        hint = "take the text out of it with ->> rather than ->, or cast it"
    elif kind.category == "A":
        hint = "an id is one value: pick one element, or unnest it in the query"
    else:
        hint = "cast it in the query (e.g. ::text), or name the id's own column"
    return f"{column} is {a_type(kind)}, which cannot be an id (an integer, text or uuid); {hint}"


def is_moment(kind: ColumnType) -> bool:
    """A date or timestamp: what ``--since`` can compare with a moment."""
    return kind.name in _MOMENTS


def a_type(kind: ColumnType) -> str:
    """The type with its article: a bigint, an integer, a uuid."""
    return f"{'an' if kind.display[:1] in 'aeio' else 'a'} {kind.display}"
