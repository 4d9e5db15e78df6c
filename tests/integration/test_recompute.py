"""Recompute on a real Postgres: one query per resource, groups evaluated, gone ids, failures."""

from __future__ import annotations

import psycopg
import pytest
from pydantic import SecretStr

from consumer.config import DatabaseSource, SyncDefinition
from consumer.dev.postgres import PostgresConfig
from consumer.dev.shop import apply_schema
from consumer.errors import ConfigurationError, Retryable
from consumer.recompute import SourceDatabase
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
