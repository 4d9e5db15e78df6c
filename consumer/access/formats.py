"""A view column in SQL, equal to the field consumer/sink/projection.py sends through the API.

Reach reads the views instead of receiving records, so each column must hold what the record's
field holds: each format of projection.py is written again in SQL, per column type, since what
projection.py formats is what psycopg loads for that type. Where SQL cannot give the API's value
for every value the API sends, the column still has the closest SQL, and a note says how it
differs (``plan`` prints it). A value the API refuses (its entity is dead-lettered) is no
concern here: a view has no dead letters, so such a row shows what SQL makes of it, or fails the
query (docs/operations.md, "Database access (views)").
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from consumer.config import FieldMapping

__all__ = ["PYTHON_WHITESPACE", "ColumnType", "Expression", "field_expression", "groups_expression"]

# What Python's str.strip() removes (str.isspace): _hash_pii strips these, btrim only spaces.
PYTHON_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# The same as an SQL literal with visible escapes (needs a UTF8 database, as any non-ASCII does).
_WHITESPACE_SQL = sql.SQL("E'" + "".join(f"\\u{ord(c):04x}" for c in PYTHON_WHITESPACE) + "'")
# projection.py's datetime: ISO-8601 in UTC, microseconds, Z; cut to milliseconds where the last
# three digits are zeros (_datetime).
ISO_US = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
ISO_DATE = "YYYY-MM-DD"
# projection.py's _TRUE and _FALSE.
TRUE_TEXTS = ("true", "t", "yes", "y", "1")
FALSE_TEXTS = ("false", "f", "no", "n", "0")

# Types psycopg loads as the str the database prints (an enum too, or any type it has no
# loader for); ``v::text`` is that text for these.
_TEXT = frozenset({"text", "varchar", "name", "citext", "xml"})
_INTEGERS = frozenset({"int2", "int4", "int8", "oid"})
_TIMES = frozenset({"timestamptz", "timestamp", "date"})
# Types whose text in the view is the digits the API's decimal sends.
_EXACT_NUMBERS = _INTEGERS | {"numeric"}
# raw: types whose value psycopg loads and projection.py sends unchanged, and the view returns
# as they are (arrays of these too).
_AS_IS = _TEXT | _INTEGERS | {"bool", "bpchar", "uuid", "json", "jsonb"}


@dataclass(frozen=True, slots=True)
class ColumnType:
    """A query column's type: its pg_type name (a domain's base type, as the server reports
    it), whether it is an enum, and an array's element type name."""

    name: str
    enum: bool = False
    element: str | None = None

    @property
    def text_like(self) -> bool:
        return self.name in _TEXT or self.enum


@dataclass(frozen=True, slots=True)
class Expression:
    """A column's SQL, and how it differs from the API's value when it does (None: equal)."""

    sql: sql.Composable
    note: str | None = None


def _q(template: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(template).format(**parts)


def _lit(text: str) -> sql.Literal:
    return sql.Literal(text)


def _text_list(texts: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(_lit(t) for t in texts)


def _not_exact(what: str, t: ColumnType) -> str:
    return f"not exact: {what} of a {t.name} column is Python's text of it in the API"


def _string(v: sql.Composable, t: ColumnType) -> Expression:
    if t.text_like or t.name in _INTEGERS or t.name == "uuid":
        return Expression(_q("{v}::text", v=v))
    if t.name == "bpchar":  # psycopg keeps char(n)'s padding; a cast to text drops it
        return Expression(_q("CASE WHEN {v} IS NULL THEN NULL ELSE format('%s', {v}) END", v=v))
    if t.name == "bool":  # str(True)
        return Expression(_q("CASE {v} WHEN true THEN 'True' WHEN false THEN 'False' END", v=v))
    if t.name == "date":
        return Expression(_q("to_char({v}::timestamp, {f})", v=v, f=_lit(ISO_DATE)))
    if t.name == "bytea":
        return Expression(_q("convert_from({v}, 'UTF8')", v=v))
    if t.name == "numeric":
        note = (
            "a numeric under 1e-6 (or a zero with more than 6 decimals) is exponent form in "
            "the API (1E-7, 0E-8), plain in the view"
        )
        return Expression(_q("{v}::text", v=v), note)
    return Expression(_q("{v}::text", v=v), _not_exact("the string", t))


def _integer(v: sql.Composable, t: ColumnType) -> Expression:
    if t.name == "bool":
        return Expression(_q("{v}::int::bigint", v=v), "the API refuses a boolean as an integer")
    return Expression(_q("{v}::bigint", v=v))


def _decimal_cents(v: sql.Composable, t: ColumnType) -> Expression:
    # Exactly two decimals; the API's JSON number is the same amount.
    return Expression(_q("round({v}::bigint::numeric / 100, 2)", v=v))


def _decimal(v: sql.Composable, t: ColumnType) -> Expression:
    if t.name == "numeric":  # the same digits, the same scale
        return Expression(v)
    if t.name in _INTEGERS:
        return Expression(_q("{v}::numeric", v=v))
    if t.name == "float8":
        return Expression(v)
    if t.name == "float4":
        note = "float4: equal as the session prints it with extra_float_digits >= 1 (the default)"
        return Expression(_q("{v}::text::float8", v=v), note)
    return Expression(_q("{v}::numeric", v=v), _not_exact("the decimal", t))


def _boolean(v: sql.Composable, t: ColumnType) -> Expression:
    if t.name == "bool":
        return Expression(v)
    if t.name in _INTEGERS:
        return Expression(_q("CASE {v} WHEN 1 THEN true WHEN 0 THEN false END", v=v))
    if t.text_like or t.name == "bpchar":
        text = _q("lower(btrim({v}::text, {ws}))", v=v, ws=_WHITESPACE_SQL)
        return Expression(
            _q(
                "CASE WHEN {t} IN ({yes}) THEN true WHEN {t} IN ({no}) THEN false END",
                t=text,
                yes=_text_list(TRUE_TEXTS),
                no=_text_list(FALSE_TEXTS),
            )
        )
    return Expression(_q("{v}::boolean", v=v), _not_exact("the boolean", t))


def _iso(moment: sql.Composable) -> sql.Composed:
    """projection.py's text of a timestamp: microseconds, or milliseconds when the last three
    digits are zeros."""
    return _q("regexp_replace(to_char({m}, {f}), '000Z$', 'Z')", m=moment, f=_lit(ISO_US))


def _datetime(v: sql.Composable, t: ColumnType) -> Expression:
    if t.name == "timestamptz":
        return Expression(_iso(_q("{v} AT TIME ZONE 'UTC'", v=v)))
    if t.name in ("timestamp", "date"):  # a timestamp without zone is UTC, a date midnight UTC
        return Expression(_iso(_q("{v}::timestamp", v=v)))
    note = (
        f"not exact: a {t.name} column is parsed as a datetime by the database in the view "
        "(no zone: the session's TimeZone), by Python in the API (no zone: UTC)"
    )
    return Expression(_iso(_q("{v}::timestamptz AT TIME ZONE 'UTC'", v=v)), note)


def _date(v: sql.Composable, t: ColumnType) -> Expression:
    day = _lit(ISO_DATE)
    if t.name == "timestamptz":
        return Expression(_q("to_char({v} AT TIME ZONE 'UTC', {f})", v=v, f=day))
    if t.name in ("timestamp", "date"):
        return Expression(_q("to_char({v}::timestamp, {f})", v=v, f=day))
    note = (
        f"not exact: a {t.name} column is parsed as a date by the database in the view "
        "(as DateStyle says), by Python in the API (ISO-8601 only)"
    )
    return Expression(_q("to_char({v}::date, {f})", v=v, f=day), note)


def _raw(v: sql.Composable, t: ColumnType) -> Expression:
    if t.name in _TIMES:
        return _datetime(v, t)
    if t.name in ("numeric", "float8"):  # the API's number has the numeric's value
        return Expression(v)
    if t.name == "float4":
        note = "float4: equal as the session prints it with extra_float_digits >= 1 (the default)"
        return Expression(_q("{v}::text::float8", v=v), note)
    if t.name == "bytea":
        return Expression(_q("convert_from({v}, 'UTF8')", v=v))
    if t.text_like or t.name in _AS_IS or (t.element is not None and t.element in _AS_IS):
        return Expression(v)
    return Expression(v, _not_exact("the raw value", t))


_FORMATS = {
    "raw": _raw,
    "string": _string,
    "integer": _integer,
    "decimal_cents": _decimal_cents,
    "decimal": _decimal,
    "boolean": _boolean,
    "datetime": _datetime,
    "date": _date,
}


def _python_text(mapping: FieldMapping, formatted: sql.Composable, t: ColumnType) -> Expression:
    """``str()`` of the formatted value, which _hash_pii hashes."""
    if mapping.format in ("string", "datetime", "date"):
        return Expression(formatted)
    if mapping.format in ("integer", "boolean"):  # str(True) is lower-cased before hashing
        return Expression(_q("{f}::text", f=formatted))
    if mapping.format == "decimal":  # the digits sent
        note = None if t.name in _EXACT_NUMBERS else _not_exact("the hashed decimal", t)
        return Expression(_q("{f}::text", f=formatted), note)
    if mapping.format == "decimal_cents":  # str() of a float: 12.0, 12.5, 12.34
        return Expression(
            _q(
                "CASE WHEN {f} = trunc({f}) THEN trunc({f})::text || '.0' "
                "ELSE rtrim({f}::text, '0') END",
                f=formatted,
            )
        )
    exact = t.text_like or t.name in _TIMES | _INTEGERS | {"bool", "bpchar", "uuid", "bytea"}
    note = None if exact else _not_exact("the hashed raw value", t)
    return Expression(_q("{f}::text", f=formatted), note)


def field_expression(
    mapping: FieldMapping, t: ColumnType, lower_collation: str | None
) -> Expression:
    """The column for one mapped field; ``lower_collation`` lower-cases every letter as Python
    does (an ICU collation), None: the database's own lower()."""
    value = _q("q.{c}", c=sql.Identifier(mapping.column))
    formatted = _FORMATS[mapping.format](value, t)
    if mapping.pii != "hash":
        return formatted
    text = _python_text(mapping, formatted.sql, t)
    trimmed = _q("btrim({t}, {ws})", t=text.sql, ws=_WHITESPACE_SQL)
    if lower_collation is not None:
        trimmed = _q("{t} COLLATE {c}", t=trimmed, c=sql.Identifier(lower_collation))
    hashed = _q("encode(sha256(convert_to(lower({t}), 'UTF8')), 'hex')", t=trimmed)
    notes = [n for n in (formatted.note, text.note) if n is not None]
    if lower_collation is None:
        notes.append(
            "hash: lower() of the database's collation; a letter it does not lower-case as "
            "Python does (any non-ASCII one, under C) hashes differently"
        )
    return Expression(hashed, "; ".join(notes) or None)


def groups_expression(names: list[str], column_of: dict[str, str]) -> sql.Composable:
    """The sorted names of the groups whose rule holds: recompute.py evaluates each rule as a
    boolean column beside the row (``column_of``), projection.py keeps the true ones, sorted by
    code point (what collation C sorts UTF-8 by)."""
    cases = sql.SQL(", ").join(
        _q("CASE WHEN q.{c} THEN {n} END", c=sql.Identifier(column_of[name]), n=_lit(name))
        for name in names
    )
    return _q(
        "ARRAY(SELECT n FROM unnest(ARRAY[{cases}]::text[]) AS n WHERE n IS NOT NULL "
        'ORDER BY n COLLATE "C")',
        cases=cases,
    )
