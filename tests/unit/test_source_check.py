"""The source check's pure rules (consumer/source_check/): which types a format reads and an id
can be, and what the rows of a sampled query say. Against a real database:
tests/integration/test_source_check.py."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.config import Resource
from consumer.source_check import Finding
from consumer.source_check.catalog import ColumnType
from consumer.source_check.column_types import format_problem, id_problem, is_moment
from consumer.source_check.sample import sampled

INT8 = ColumnType("int8", "N", "bigint")
INT4 = ColumnType("int4", "N", "integer")
NUMERIC = ColumnType("numeric", "N", "numeric")  # no declared scale: sum(bigint), count(*)::numeric
WHOLE = ColumnType("numeric", "N", "numeric(12,0)", 0)
CENTS = ColumnType("numeric", "N", "numeric(12,2)", 2)
FLOAT8 = ColumnType("float8", "N", "double precision")
MONEY = ColumnType("money", "N", "money")
TEXT = ColumnType("text", "S", "text")
VARCHAR = ColumnType("varchar", "S", "character varying(20)")
BOOL = ColumnType("bool", "B", "boolean")
TIMESTAMPTZ = ColumnType("timestamptz", "D", "timestamp with time zone")
TIMESTAMP = ColumnType("timestamp", "D", "timestamp without time zone")
DATE = ColumnType("date", "D", "date")
TIME = ColumnType("time", "D", "time without time zone")
TIMETZ = ColumnType("timetz", "D", "time with time zone")
INTERVAL = ColumnType("interval", "T", "interval")
UUID = ColumnType("uuid", "U", "uuid")
JSONB = ColumnType("jsonb", "U", "jsonb")
BYTEA = ColumnType("bytea", "U", "bytea")
ARRAY = ColumnType("_int8", "A", "bigint[]")
ENUM = ColumnType("region", "E", "region")
COMPOSITE = ColumnType("address", "C", "address")


@pytest.mark.parametrize(
    ("format_name", "kind"),
    [
        ("integer", INT8),
        ("integer", NUMERIC),
        ("integer", WHOLE),
        ("decimal_cents", INT4),
        ("decimal_cents", NUMERIC),
        ("decimal", CENTS),
        ("decimal", FLOAT8),
        ("boolean", BOOL),
        ("boolean", INT4),
        ("datetime", TIMESTAMPTZ),
        ("datetime", TIMESTAMP),
        ("datetime", DATE),
        ("date", TIMESTAMPTZ),
        ("date", DATE),
        ("raw", JSONB),
        ("string", TIME),
    ],
)
def test_a_format_reads_the_types_meant_for_it(format_name: str, kind: ColumnType) -> None:
    assert format_problem(format_name, "c", kind) is None


@pytest.mark.parametrize(
    ("format_name", "kind", "words"),
    [
        ("integer", TEXT, "format integer cannot read c, a text; map another column, or cast"),
        ("integer", CENTS, "a numeric(12,2): it holds fractions, which integer refuses; use format "
         "decimal, or round it in the query (round(c)::bigint)"),
        ("integer", FLOAT8, "a double precision: it holds fractions"),
        ("integer", MONEY, "format integer cannot read c, a money"),
        ("decimal_cents", CENTS, "format decimal_cents reads whole cents, and c is a "
         "numeric(12,2), an amount with fractions: use format decimal"),
        ("decimal_cents", FLOAT8, "c is a double precision, an amount with fractions"),
        ("decimal_cents", TEXT, "format decimal_cents cannot read c, a text"),
        ("decimal", TEXT, "format decimal cannot read c, a text"),
        ("boolean", TEXT, "format boolean cannot read c, a text"),
        ("boolean", CENTS, "boolean reads a boolean or an integer 0 or 1"),
        ("boolean", NUMERIC, "boolean reads a boolean or an integer 0 or 1"),
        ("datetime", TIME, "cannot read c, a time without time zone: it holds no day"),
        ("datetime", TIMETZ, "a time with time zone: it holds no day"),
        ("date", TIME, "format date cannot read c, a time without time zone: it holds no day"),
        ("datetime", INTERVAL, "format datetime cannot read c, an interval"),
        ("datetime", INT8, "format datetime cannot read c, a bigint"),
    ],
)  # fmt: skip
def test_a_format_names_the_type_it_cannot_read(
    format_name: str, kind: ColumnType, words: str
) -> None:
    problem = format_problem(format_name, "c", kind)
    assert problem is not None
    assert words in problem


@pytest.mark.parametrize("kind", [INT8, INT4, NUMERIC, WHOLE, TEXT, VARCHAR, UUID, ENUM])
def test_integers_text_uuids_and_enums_can_be_ids(kind: ColumnType) -> None:
    assert id_problem("k", kind) is None


@pytest.mark.parametrize(
    ("kind", "hint"),
    [
        (JSONB, "k is a jsonb, which cannot be an id (an integer, text or uuid); take the text "
         "out of it with ->> rather than ->"),
        (ARRAY, "an id is one value"),
        (BOOL, "k is a boolean, which cannot be an id"),
        (BYTEA, "k is a bytea, which cannot be an id"),
        (FLOAT8, "k is a double precision, which cannot be an id"),
        (CENTS, "k is a numeric(12,2), which cannot be an id"),
        (COMPOSITE, "k is an address, which cannot be an id"),
        (TIMESTAMPTZ, "cast it in the query (e.g. ::text), or name the id's own column"),
    ],
)  # fmt: skip
def test_other_types_cannot_be_ids(kind: ColumnType, hint: str) -> None:
    problem = id_problem("k", kind)
    assert problem is not None
    assert hint in problem


def test_since_compares_with_dates_and_timestamps_alone() -> None:
    assert [is_moment(k) for k in (DATE, TIMESTAMP, TIMESTAMPTZ, TIME, TIMETZ, TEXT)] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_a_finding_that_does_not_stop_run_says_so() -> None:
    assert Finding("resources.r.key", "wrong").line == "resources.r.key: wrong"
    assert Finding("resources.r.tenant", "some null", stops_run=False).line == (
        "resources.r.tenant: some null (this does not stop run)"
    )


# --- what the rows of the sampled query say -------------------------------------------------

RESOURCE = Resource.model_validate(
    {
        "reach_schema": "orders",
        "key": "id",
        "tenant": "merchant",
        "triggers": [{"table": "public.orders", "id": "id"}],
        "query": "SELECT id, merchant FROM orders WHERE id = ANY(%(ids)s)",
        "mapping": {"orderId": {"column": "id"}},
        "delivery": {"mode": "batch"},
    }
)
ASKED = ["1", "2", "3", "4"]


def _sampled(
    rows: list[tuple[Any, bool]], failed: dict[str, str] | None = None, asked: list[str] = ASKED
) -> list[tuple[str, str, bool]]:
    findings = sampled("resources.orders", RESOURCE, "public.orders", asked, rows, failed or {})
    return [(f.where, f.reason, f.stops_run) for f in findings]


def test_one_row_per_asked_id_says_nothing() -> None:
    # Keys come back typed (an int, a uuid); ids are asked as text, as recompute asks them.
    assert _sampled([(1, False), (2, False), ("3", False), (4, False)]) == []


def test_two_rows_for_one_id_stop_run() -> None:
    rows = [(1, False), (1, False), (2, False), (3, False), (3, False), (3, False), (4, False)]
    assert _sampled(rows) == [
        (
            "resources.orders.query",
            "the query returned 2 rows for id 1 (and 1 more of 4 sampled from public.orders): a "
            "join fans out; return one row per id (aggregate the joined rows, or pick one with "
            "DISTINCT ON)",
            True,
        )
    ]


def test_a_key_that_was_not_asked_for_stops_run_and_hides_the_missing_rows() -> None:
    found = _sampled([(11, False), (12, False), (13, False), (4, False)])
    assert found == [
        (
            "resources.orders.key",
            "asked for 4 ids sampled from public.orders, the query returned id 11 (and 2 more), "
            "not one of them: key id names the wrong column, or the query selects by another",
            True,
        )
    ]


def test_a_null_key_stops_run() -> None:
    found = _sampled([(None, False), (2, False), (3, False), (4, False)])
    assert found[0] == (
        "resources.orders.key",
        "id is null in 1 of the 4 rows returned for 4 ids sampled from public.orders: the key "
        "must be the id the query selects by",
        True,
    )


def test_a_tenant_null_in_every_row_stops_run() -> None:
    assert _sampled([(1, True), (2, True), (3, True), (4, True)]) == [
        (
            "resources.orders.tenant",
            "tenant column merchant is null in every row returned for the 4 ids sampled from "
            "public.orders: it names the wrong column, or its join finds nothing",
            True,
        )
    ]


def test_a_tenant_null_in_some_rows_is_told_but_does_not_stop_run() -> None:
    assert _sampled([(1, False), (2, True), (3, False), (4, True)]) == [
        (
            "resources.orders.tenant",
            "tenant column merchant is null for id 2 (and 1 more of 4 sampled from "
            "public.orders): those records are dead-lettered until it is set",
            False,
        )
    ]


def test_the_query_failing_for_every_id_stops_run_for_some_does_not() -> None:
    reason = 'value "<value>" is out of range for type integer'
    every = _sampled([], {i: reason for i in ASKED})
    assert every == [
        (
            "resources.orders.query",
            f"the query fails for each of the 4 ids sampled from public.orders: {reason}; it "
            "must run with real ids (is %(ids)s cast to a type they are not?)",
            True,
        )
    ]
    some = _sampled([(1, False), (2, False), (4, False)], {"3": "division by zero"})
    assert some == [
        (
            "resources.orders.query",
            "the query fails for id 3 (of 4 sampled from public.orders): division by zero; those "
            "records are dead-lettered",
            False,
        )
    ]


def test_asked_ids_without_a_row_are_told_but_do_not_stop_run() -> None:
    assert _sampled([(1, False), (3, False)]) == [
        (
            "resources.orders.query",
            "the query returns no row for id 2 (and 1 more of 4 sampled from public.orders): "
            "recompute takes such an entity as deleted, and deletes it from Reach; if it exists, "
            "a join or a condition of the query drops it",
            False,
        )
    ]
