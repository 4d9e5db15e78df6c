"""Recompute on a real Postgres: one query per resource, groups evaluated, gone ids, failures;
a row the driver, the server or the projection cannot handle fails its entity alone."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import psycopg
import pytest
from pydantic import SecretStr
from reach_devstack.postgres import PostgresConfig
from reach_devstack.shop import apply_schema

from consumer.config import DatabaseSource, Resource, SyncDefinition
from consumer.errors import BadRecord, ConfigurationError, Retryable
from consumer.router.dirty import EntityId
from consumer.sink.projection import project
from consumer.sink.recompute import Recomputed, SourceDatabase, UnloadableRow
from tests.shop_definition import shop_definition


def _definition(dsn: str) -> SyncDefinition:
    return shop_definition(REACH_SYNC_DATABASE_URL=dsn)


@pytest.fixture
def shop(database: PostgresConfig) -> PostgresConfig:
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        apply_schema(conn)
        conn.execute("INSERT INTO merchants (id, name, external_id) VALUES (1, 'M', 'merchant-1')")
        conn.execute(
            "INSERT INTO customers (id, merchant_id, email) VALUES "
            "(1, 1, 'a@example.com'), (2, 1, 'b@example.com')"
        )
        conn.execute(
            "INSERT INTO transactions (id, merchant_id, customer_id, status, amount_cents) VALUES "
            "(1, 1, 1, 'completed', 60000), (2, 1, 1, 'completed', 50000),"
            " (3, 1, 1, 'completed', 100), (4, 1, 2, 'pending', 999999)"
        )
    return database


async def test_rows_groups_and_gone_ids_in_one_query(shop: PostgresConfig) -> None:
    definition = _definition(shop.dsn)
    db = SourceDatabase(definition.source.database)
    await db.open()
    try:
        customers = await db.recompute(definition.resources["customers"], [1, 2, 999])
        transactions = await db.recompute(definition.resources["transactions"], [4, 5])
    finally:
        await db.close()

    assert customers.gone == [999]
    assert set(customers.rows) == {"1", "2"}
    one, two = customers.rows["1"], customers.rows["2"]
    assert one["tenant"] == "merchant-1"
    assert one["lifetime_value_cents"] == 110100
    assert (one["__group_high_value"], one["__group_repeat_buyer"]) == (True, True)
    # A pending sale counts for neither the value nor the groups.
    assert (two["lifetime_value_cents"], two["__group_high_value"]) == (0, False)
    assert set(transactions.rows) == {"4"} and transactions.gone == [5]


async def test_ids_as_numbers_and_as_text_mix_in_one_window(shop: PostgresConfig) -> None:
    definition = _definition(shop.dsn)
    db = SourceDatabase(definition.source.database)
    await db.open()
    try:
        customers = await db.recompute(definition.resources["customers"], [1, "2", "999"])
    finally:
        await db.close()
    assert set(customers.rows) == {"1", "2"} and customers.gone == ["999"]


async def test_a_broken_query_is_a_configuration_error(shop: PostgresConfig) -> None:
    definition = _definition(shop.dsn)
    broken = definition.resources["transactions"].model_copy(
        update={"query": "SELECT nope FROM transactions WHERE id = ANY(%(ids)s)"}
    )
    db = SourceDatabase(definition.source.database)
    await db.open()
    try:
        with pytest.raises(ConfigurationError, match="nope"):
            await db.recompute(broken, [1])
    finally:
        await db.close()


async def test_an_unreachable_database_is_retryable() -> None:
    source = DatabaseSource(dsn=SecretStr("postgresql://u:p@127.0.0.1:9/x?connect_timeout=1"))
    db = SourceDatabase(source, pool_timeout_s=1.0)
    db_resource = _definition("postgresql://u:p@127.0.0.1:9/x").resources["transactions"]
    await db.open()
    try:
        with pytest.raises(Retryable):
            await db.recompute(db_resource, [1])
    finally:
        await db.close()


# --- rows that cannot be read or projected -------------------------------------------------------

GOOD = [1, 2, 9, 10]
# id -> the column set to a value loaded or projected badly (the rest of the row is good).
ODDITIES = {
    3: "seen_at = 'infinity'",
    4: "seen_at = '-infinity'",
    5: "born = '0044-03-15 BC'",
    6: "score = 'NaN'",
    7: "blob = '\\xff'::bytea",  # not UTF-8 (a lone continuation byte)
    8: "signup = 'not-a-date'",  # text, but mapped as a date
}
MANY = 256  # good rows 1000.. for the query bound


def _oddities_resource(dsn: str, query: str, **mapping: dict[str, str]) -> Resource:
    base = _definition(dsn).resources["transactions"]
    return Resource.model_validate(
        {
            **base.model_dump(exclude={"groups", "tenants_query"}),
            "reach_schema": "oddities",
            "triggers": [{"table": "public.oddities", "id": "id"}],
            "query": query,
            "mapping": mapping,
        }
    )


RAW = "SELECT id, tenant, seen_at, born, score, blob, signup FROM oddities WHERE id = ANY(%(ids)s)"
RAW_MAPPING = {
    "seenAt": {"column": "seen_at", "format": "datetime"},
    "born": {"column": "born", "format": "date"},
    "score": {"column": "score"},
    "blob": {"column": "blob", "format": "string"},
    "signup": {"column": "signup", "format": "date"},
}
# The bytes decoded by the server: it fails while computing that row alone.
CONVERTED = (
    "SELECT id, tenant, convert_from(blob, 'UTF8') AS text FROM oddities WHERE id = ANY(%(ids)s)"
)


@pytest.fixture
def oddities(database: PostgresConfig) -> PostgresConfig:
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE oddities (id bigint PRIMARY KEY, tenant text NOT NULL DEFAULT 't1',"
            " seen_at timestamp, born date, score numeric, blob bytea, signup text)"
        )
        conn.execute(
            "INSERT INTO oddities (id, seen_at, born, score, blob, signup)"
            " SELECT id, '2026-01-02 03:04:05', '1990-05-06', 12.5, 'caf\xc3\xa9'::bytea,"
            " '2026-01-01' FROM unnest(%s::bigint[]) AS id",
            ([*GOOD, *ODDITIES, *range(1000, 1000 + MANY)],),
        )
        for entity_id, change in ODDITIES.items():
            conn.execute(f"UPDATE oddities SET {change} WHERE id = %s", (entity_id,))
    return database


@pytest.fixture
async def counted_db(oddities: PostgresConfig) -> AsyncIterator[SourceDatabase]:
    """The source database; its ``queries`` count how many queries its recomputes ran."""
    db = SourceDatabase(_definition(oddities.dsn).source.database)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


def _projected(resource: Resource, recomputed: Recomputed) -> tuple[set[str], dict[str, str]]:
    """What delivery would make of it: the ids projected, and every id that fails (in the
    recompute or in the projection) with its reason."""
    projected: set[str] = set()
    failed = {i: str(e) for i, e in recomputed.failed.items()}
    for entity_id, row in recomputed.rows.items():
        try:
            project(resource, row)
        except BadRecord as exc:
            failed[entity_id] = str(exc)
        else:
            projected.add(entity_id)
    return projected, failed


@pytest.mark.parametrize(
    ("bad", "query", "stage", "reason"),
    [
        (3, RAW, "load", "field 'seenAt' (column 'seen_at'): timestamp too large (after year 10K)"),
        (4, RAW, "load", "field 'seenAt' (column 'seen_at'): timestamp too small (before year 1)"),
        (5, RAW, "load", "field 'born' (column 'born'): date too small (before year 1)"),
        (6, RAW, "project", "field 'score' (column 'score') as raw: not a finite number"),
        (7, RAW, "project", "field 'blob' (column 'blob') as string: bytes that are not UTF-8"),
        (8, RAW, "project", "field 'signup' (column 'signup') as date: Invalid isoformat string"),
        (7, CONVERTED, "load", 'invalid byte sequence for encoding "UTF8": 0xff (SQLSTATE 22021)'),
    ],
    ids=["infinity", "-infinity", "bc-date", "nan", "bytea-raw", "format", "bytea-server-side"],
)
async def test_a_row_that_cannot_be_read_or_projected_fails_its_entity_alone(
    oddities: PostgresConfig,
    counted_db: SourceDatabase,
    bad: int,
    query: str,
    stage: str,
    reason: str,
) -> None:
    db = counted_db
    mapping = RAW_MAPPING if query == RAW else {"text": {"column": "text", "format": "string"}}
    resource = _oddities_resource(oddities.dsn, query, **mapping)
    window: list[EntityId] = [1, 2, bad, 9, 10, 99]

    recomputed = await db.recompute(resource, window)
    projected, failed = _projected(resource, recomputed)

    # The others are recomputed and projected; the bad one fails with the real reason, and is
    # never taken for a delete.
    assert projected == {"1", "2", "9", "10"}, (projected, failed)
    assert list(failed) == [str(bad)], failed
    assert reason in failed[str(bad)], failed
    assert recomputed.gone == [99]
    if stage == "load":
        assert isinstance(recomputed.failed[str(bad)], UnloadableRow)
        assert str(bad) not in recomputed.rows
    else:
        assert not recomputed.failed and str(bad) in recomputed.rows
    # Reasons withhold the value.
    for value in ("infinity", "0044", "Decimal(", "\\xff'", "not-a-date"):
        assert value not in failed[str(bad)], failed
    # One query when the driver is what fails (rows are loaded one by one from its result);
    # the server's failure is bisected: the query, one with no ids, then halves.
    assert db.queries == (1 if query == RAW else 2 + 2 * math.ceil(math.log2(len(window))))


async def test_every_bad_row_of_a_window_is_isolated_within_a_bounded_number_of_queries(
    oddities: PostgresConfig, counted_db: SourceDatabase
) -> None:
    db = counted_db
    many: list[EntityId] = list(range(1000, 1000 + MANY))
    resource = _oddities_resource(oddities.dsn, RAW, **RAW_MAPPING)
    recomputed = await db.recompute(resource, [*many, *GOOD, *ODDITIES])
    projected, failed = _projected(resource, recomputed)
    assert projected == {str(i) for i in [*many, *GOOD]}
    assert set(failed) == {str(i) for i in ODDITIES} and not recomputed.gone
    assert set(recomputed.failed) == {"3", "4", "5"}
    assert db.queries == 1

    # A server-side failure among 256 good rows: about 2·log2(n) queries, not one per id.
    db.queries = 0
    converted = _oddities_resource(oddities.dsn, CONVERTED, text={"column": "text"})
    window: list[EntityId] = [*many[:128], 7, *many[128:]]
    recomputed = await db.recompute(converted, window)
    assert set(recomputed.failed) == {"7"} and len(recomputed.rows) == MANY
    assert not recomputed.gone
    assert db.queries <= 2 + 2 * math.ceil(math.log2(len(window))), db.queries


async def test_an_id_the_key_column_cannot_take_fails_alone(
    oddities: PostgresConfig, counted_db: SourceDatabase
) -> None:
    """A dirty key whose id is no bigint used to fail the whole window, forever."""
    db = counted_db
    resource = _oddities_resource(oddities.dsn, RAW, **RAW_MAPPING)
    recomputed = await db.recompute(resource, [1, "nonsense", 2])
    assert set(recomputed.rows) == {"1", "2"} and not recomputed.gone
    assert "invalid input syntax for type bigint" in str(recomputed.failed["nonsense"])
    assert '"nonsense"' not in str(recomputed.failed["nonsense"])


async def test_a_query_failing_for_every_row_dead_letters_every_entity(
    oddities: PostgresConfig, counted_db: SourceDatabase
) -> None:
    """It cannot be told from every row being bad (recompute.py): each entity fails with the
    server's message, none is gone, and ``dlq replay`` brings them back once it is fixed."""
    db = counted_db
    query = "SELECT id, tenant, signup::date AS d FROM oddities WHERE id = ANY(%(ids)s)"
    window: list[EntityId] = [8, 9]
    with psycopg.connect(oddities.dsn, autocommit=True) as conn:
        conn.execute("UPDATE oddities SET signup = 'later' WHERE id = 9")
    recomputed = await db.recompute(
        _oddities_resource(oddities.dsn, query, d={"column": "d"}), window
    )
    assert not recomputed.rows and not recomputed.gone
    assert set(recomputed.failed) == {"8", "9"}
    assert all("invalid input syntax for type date" in str(e) for e in recomputed.failed.values())


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELEC id FROM oddities WHERE id = ANY(%(ids)s)", 'syntax error at or near "SELEC"'),
        (
            "SELECT id, tenant, nope FROM oddities WHERE id = ANY(%(ids)s)",
            'column "nope" does not exist',
        ),
        # A constant fails to cast whatever the rows: it fails with no ids too.
        (
            "SELECT id, tenant, 'x'::int AS n FROM oddities WHERE id = ANY(%(ids)s)",
            "invalid input syntax for type integer",
        ),
    ],
    ids=["syntax", "missing-column", "constant-cast"],
)
async def test_a_wrong_query_is_a_configuration_error_with_the_servers_message(
    oddities: PostgresConfig,
    counted_db: SourceDatabase,
    query: str,
    message: str,
) -> None:
    db = counted_db
    resource = _oddities_resource(oddities.dsn, query, n={"column": "id"})
    with pytest.raises(ConfigurationError) as caught:
        await db.recompute(resource, [1, 2, 3, 9])
    assert f"the query of 'oddities' fails: {message}" in str(caught.value)
    assert "None" not in str(caught.value)
    assert db.queries <= 2


async def test_a_broken_tenants_query_carries_the_servers_message(oddities: PostgresConfig) -> None:
    resource = _oddities_resource(oddities.dsn, RAW, **RAW_MAPPING).model_copy(
        update={"tenants_query": "SELECT nope FROM oddities"}
    )
    db = SourceDatabase(_definition(oddities.dsn).source.database)
    await db.open()
    try:
        with pytest.raises(ConfigurationError, match='column "nope" does not exist'):
            await db.tenants(resource)
    finally:
        await db.close()
