"""Exact values and values that cannot be sent, on a real Postgres: a numeric goes out with its
own digits and a timestamp with its microseconds; every kind of value JSON or Python cannot
carry (``infinity``, BC and after-9999 timestamps and dates, NaN and infinite numbers) fails its
own entity alone, in the window of good rows beside it, with a reason naming the field and never
the value, for every format that reads such a column."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import psycopg
import pytest
from reach_devstack.postgres import PostgresConfig

from consumer.config import Resource
from consumer.errors import BadRecord
from consumer.sink.projection import WITHHELD, Projected, project
from consumer.sink.recompute import SourceDatabase
from tests.shop_definition import shop_definition

GOOD = [1, 2]
# id -> (column, the value it holds instead of the good one, its text a reason must not quote)
BAD: dict[int, tuple[str, str, str]] = {
    10: ("ts", "'infinity'", "infinity"),
    11: ("ts", "'-infinity'", "infinity"),
    12: ("ts", "'0044-03-15 12:00 BC'", "0044"),
    13: ("ts", "'10000-01-01 00:00'", "10000"),
    20: ("tstz", "'infinity'", "infinity"),
    21: ("tstz", "'-infinity'", "infinity"),
    22: ("tstz", "'0044-03-15 12:00+00 BC'", "0044"),
    23: ("tstz", "'10000-01-01 00:00+00'", "10000"),
    30: ("d", "'infinity'", "infinity"),
    31: ("d", "'-infinity'", "infinity"),
    32: ("d", "'0044-03-15 BC'", "0044"),
    33: ("d", "'10000-01-01'", "10000"),
    40: ("n", "'NaN'", "NaN"),
    41: ("n", "'Infinity'", "Infinity"),  # numeric infinity: Postgres 14 and later
    42: ("n", "'-Infinity'", "Infinity"),
    50: ("f", "'NaN'", "NaN"),
    51: ("f", "'Infinity'", "Infinity"),
    52: ("f", "'-Infinity'", "Infinity"),
    # an array's element: the driver quotes the text from that element on
    60: ("tsa", "'{2026-01-02 03:04:05,10000-01-01 00:00}'", "10000"),
    61: ("tsa", "'{2026-01-02 03:04:05,infinity}'", "infinity"),
}
# Why each kind fails: the driver cannot load a timestamp or date outside Python's years 1 to
# 9999 (recompute.py dead-letters the row, naming the field); JSON has no NaN nor infinity
# (projection.py refuses it, naming the field and the format).
LOAD = {
    ("ts", "'infinity'"): "timestamp too large (after year 10K): <value>",
    ("ts", "'-infinity'"): "timestamp too small (before year 1): <value>",
    ("ts", "'0044-03-15 12:00 BC'"): "timestamp too small (before year 1): <value>",
    ("ts", "'10000-01-01 00:00'"): "timestamp too large (after year 10K): <value>",
    ("tstz", "'infinity'"): "timestamp too large (after year 10K): <value>",
    ("tstz", "'-infinity'"): "timestamp too small (before year 1): <value>",
    ("tstz", "'0044-03-15 12:00+00 BC'"): "timestamp too small (before year 1): <value>",
    ("tstz", "'10000-01-01 00:00+00'"): "timestamp too large (after year 10K): <value>",
    ("d", "'infinity'"): "date too large (after year 10K): <value>",
    ("d", "'-infinity'"): "date too small (before year 1): <value>",
    ("d", "'0044-03-15 BC'"): "date too small (before year 1): <value>",
    ("d", "'10000-01-01'"): "date too large (after year 10K): <value>",
    (
        "tsa",
        "'{2026-01-02 03:04:05,10000-01-01 00:00}'",
    ): "timestamp too large (after year 10K): <value>",
    ("tsa", "'{2026-01-02 03:04:05,infinity}'"): (
        "can't parse timestamp <value>: year 0 is out of range"
    ),
}
NOT_FINITE = "not a finite number (NaN or infinite)"
TIMES = ("datetime", "date", "raw", "string")
NUMBERS = ("raw", "string", "decimal", "integer", "decimal_cents")
READERS = [
    *((c, f) for c in ("ts", "tstz", "d") for f in TIMES),
    *((c, f) for c in ("n", "f") for f in NUMBERS),
    ("tsa", "raw"),
]


@pytest.fixture
def table(database: PostgresConfig) -> PostgresConfig:
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        if conn.info.server_version < 140000:
            pytest.skip("numeric 'Infinity' needs Postgres 14")
        conn.execute(
            "CREATE TABLE unsendable (id bigint PRIMARY KEY, tenant text NOT NULL DEFAULT 't1',"
            " ts timestamp, tstz timestamptz, d date, n numeric, f float8, tsa timestamp[],"
            " pi numeric, money numeric(10, 2), tiny numeric)"
        )
        conn.execute(
            "INSERT INTO unsendable (id, ts, tstz, d, n, f, tsa, pi, money, tiny)"
            " SELECT id, '2026-01-02 03:04:05.123456', '2026-01-02 03:04:05.5+02', '2026-01-02',"
            " 12, 12, '{2026-01-02 03:04:05}', 3.14159265358979323846, 1.5, 0.0000001"
            " FROM unnest(%s::bigint[]) AS id",
            ([*GOOD, *BAD],),
        )
        for entity_id, (column, value, _) in BAD.items():
            conn.execute(f"UPDATE unsendable SET {column} = {value} WHERE id = %s", (entity_id,))
    return database


@pytest.fixture
async def db(table: PostgresConfig) -> AsyncIterator[SourceDatabase]:
    source = SourceDatabase(shop_definition(REACH_SYNC_DATABASE_URL=table.dsn).source.database)
    await source.open()
    try:
        yield source
    finally:
        await source.close()


def _resource(dsn: str, columns: list[str], mapping: dict[str, dict[str, str]]) -> Resource:
    base = shop_definition(REACH_SYNC_DATABASE_URL=dsn).resources["transactions"]
    return Resource.model_validate(
        {
            **base.model_dump(exclude={"groups", "tenants_query"}),
            "reach_schema": "unsendable",
            "triggers": [{"table": "public.unsendable", "id": "id"}],
            "query": f"SELECT id, tenant, {', '.join(columns)} FROM unsendable"
            " WHERE id = ANY(%(ids)s)",
            "mapping": mapping,
        }
    )


async def _deliver(
    db: SourceDatabase, resource: Resource
) -> tuple[dict[str, Projected], dict[str, str]]:
    """One window of every id, as delivery takes it (delivery.py): the projected records, and
    each entity's dead letter reason, whether recompute or projection failed it."""
    recomputed = await db.recompute(resource, [*GOOD, *BAD])
    assert recomputed.gone == []
    failed = {i: str(e) for i, e in recomputed.failed.items()}
    projected: dict[str, Projected] = {}
    for entity_id, row in recomputed.rows.items():
        try:
            projected[entity_id] = project(resource, row)
        except BadRecord as exc:
            failed[entity_id] = str(exc)
    return projected, failed


@pytest.mark.parametrize(("column", "fmt"), READERS, ids=[f"{c}-{f}" for c, f in READERS])
async def test_each_unsendable_value_fails_its_entity_alone_naming_the_field(
    table: PostgresConfig, db: SourceDatabase, column: str, fmt: str
) -> None:
    resource = _resource(table.dsn, [column], {"v": {"column": column, "format": fmt}})
    projected, failed = await _deliver(db, resource)

    bad = {str(i): value for i, (c, value, _) in BAD.items() if c == column}
    assert set(failed) == set(bad), failed
    assert set(projected) == {str(i) for i in [*GOOD, *BAD]} - set(bad)
    for entity_id, value in bad.items():
        # The whole reason, so that nothing else (the value) is in it.
        if (column, value) in LOAD:
            expected = (
                f"the source row cannot be loaded: field 'v' (column '{column}'):"
                f" {LOAD[column, value].replace('<value>', WITHHELD)}"
            )
        else:
            expected = f"field 'v' (column '{column}') as {fmt}: {NOT_FINITE}"
        assert failed[entity_id] == expected


async def test_a_window_of_every_kind_at_once_sends_the_good_rows(
    table: PostgresConfig, db: SourceDatabase
) -> None:
    mapping = {
        "seenAt": {"column": "ts", "format": "datetime"},
        "paidAt": {"column": "tstz", "format": "datetime"},
        "born": {"column": "d", "format": "date"},
        "amount": {"column": "n", "format": "decimal"},
        "ratio": {"column": "f", "format": "raw"},
        "stamps": {"column": "tsa", "format": "raw"},
    }
    field_of = {m["column"]: name for name, m in mapping.items()}
    resource = _resource(table.dsn, ["ts", "tstz", "d", "n", "f", "tsa"], mapping)
    projected, failed = await _deliver(db, resource)

    assert sorted(projected) == ["1", "2"]
    assert set(failed) == {str(i) for i in BAD}
    for entity_id, (column, _, text) in BAD.items():
        reason = failed[str(entity_id)]
        assert f"field '{field_of[column]}' (column '{column}')" in reason, reason
        assert text not in reason.replace(NOT_FINITE, ""), reason
    assert orjson.dumps(projected["1"].record, option=orjson.OPT_SORT_KEYS) == (
        b'{"amount":12,"born":"2026-01-02","paidAt":"2026-01-02T01:04:05.500Z",'
        b'"ratio":12.0,"seenAt":"2026-01-02T03:04:05.123456Z",'
        b'"stamps":["2026-01-02T03:04:05.000Z"]}'
    )


async def test_numerics_and_timestamps_go_out_exactly(
    table: PostgresConfig, db: SourceDatabase
) -> None:
    mapping = {
        "pi": {"column": "pi", "format": "decimal"},
        "piRaw": {"column": "pi", "format": "raw"},
        "piText": {"column": "pi", "format": "string"},
        "money": {"column": "money", "format": "decimal"},
        "moneyRaw": {"column": "money", "format": "raw"},
        "tiny": {"column": "tiny", "format": "decimal"},
        "seenAt": {"column": "ts", "format": "datetime"},
    }
    resource = _resource(table.dsn, ["pi", "money", "tiny", "ts"], mapping)
    recomputed = await db.recompute(resource, [1])
    body = orjson.dumps(project(resource, recomputed.rows["1"]).record)
    assert body == (
        b'{"pi":3.14159265358979323846,"piRaw":3.14159265358979323846,'
        b'"piText":"3.14159265358979323846","money":1.50,"moneyRaw":1.5,"tiny":0.0000001,'
        b'"seenAt":"2026-01-02T03:04:05.123456Z"}'
    )
