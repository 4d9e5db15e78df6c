"""The sample shop on a real Postgres: the seed is deterministic and idempotent, the load is real.

The load assertions compare the generator's own accounting with what the database holds, so a
generator that claims changes it did not make (or makes ones it does not count) fails here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from reach_devstack.load import OPERATIONS, run_load
from reach_devstack.postgres import PostgresConfig, create_database
from reach_devstack.shop import seed

CUSTOMERS = 300
TRANSACTIONS = 900
RATE = 300.0
SECONDS = 2.0


def _rows(dsn: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def _count(dsn: str, table: str) -> int:
    return int(str(_rows(dsn, f"SELECT count(*) FROM {table}")[0][0]))


def _statuses(dsn: str) -> dict[str, int]:
    rows = _rows(dsn, "SELECT status, count(*) FROM transactions GROUP BY status")
    return {str(status): int(str(n)) for status, n in rows}


@pytest.fixture
def other_database(
    postgres: PostgresConfig, unique: Callable[[str], str]
) -> Iterator[PostgresConfig]:
    """A second fresh database, to compare two seeds."""
    config = PostgresConfig(
        bin_dir=postgres.bin_dir,
        data_dir=postgres.data_dir,
        port=postgres.port,
        user=postgres.user,
        password=postgres.password,
        database=unique("db"),
    )
    create_database(config)
    yield config
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{config.database}" WITH (FORCE)')


def test_seed_is_deterministic_and_runs_once(
    database: PostgresConfig, other_database: PostgresConfig
) -> None:
    first = seed(database.dsn, customers=CUSTOMERS, transactions=TRANSACTIONS, rng_seed=3)
    assert (first.merchants, first.customers, first.transactions) == (3, CUSTOMERS, TRANSACTIONS)
    assert not first.skipped
    assert _rows(database.dsn, "SELECT external_id FROM merchants ORDER BY id") == [
        ("merchant-1",),
        ("merchant-2",),
        ("merchant-3",),
    ]

    # Same seed, another database: the very same rows.
    seed(other_database.dsn, customers=CUSTOMERS, transactions=TRANSACTIONS, rng_seed=3)
    for table in ("merchants", "customers", "transactions"):
        query = f"SELECT * FROM {table} ORDER BY id"
        assert _rows(database.dsn, query) == _rows(other_database.dsn, query)

    # Seeding again keeps what is there.
    again = seed(database.dsn, customers=10, transactions=10, rng_seed=4)
    assert again.skipped
    assert _count(database.dsn, "customers") == CUSTOMERS

    # Replace empties the shop first, and new rows continue after the seeded ids.
    replaced = seed(database.dsn, customers=10, transactions=20, rng_seed=4, existing="replace")
    assert not replaced.skipped
    assert _count(database.dsn, "customers") == 10
    assert _count(database.dsn, "transactions") == 20
    new_id = _rows(
        database.dsn,
        "INSERT INTO customers (merchant_id, email) VALUES (1, 'new@example.com') RETURNING id",
    )
    assert new_id == [(11,)]


def test_load_makes_the_changes_it_reports(database: PostgresConfig) -> None:
    dsn = database.dsn
    seed(dsn, customers=CUSTOMERS, transactions=TRANSACTIONS, rng_seed=1)
    statuses_before = _statuses(dsn)

    lines: list[str] = []
    stats = run_load(
        dsn, rate=RATE, seconds=SECONDS, rng_seed=11, progress_every_s=0.5, progress=lines.append
    )

    print(stats.summary(RATE))
    # Paced: close to rate x seconds, not a flood and not a trickle.
    assert RATE * SECONDS * 0.9 <= stats.operations <= RATE * SECONDS * 1.05
    assert lines and lines[-1] == stats.summary(RATE)
    assert stats.reconnects == 0
    # Every kind of change happened at least once.
    assert {k for k in OPERATIONS if stats.done[k] == 0} == set()
    assert stats.commits > sum(stats.done.values())  # bursts commit several times

    assert _count(dsn, "customers") == (
        CUSTOMERS + stats.done["customer_insert"] - stats.done["customer_delete"]
    )
    assert _count(dsn, "transactions") == (
        TRANSACTIONS + stats.done["transaction_insert"] - stats.done["transaction_delete"]
    )
    assert _statuses(dsn) != statuses_before
    # Every sale still belongs to a customer of its own merchant (the composite FK holds).
    orphans = _rows(
        dsn,
        "SELECT count(*) FROM transactions t LEFT JOIN customers c"
        " ON c.id = t.customer_id AND c.merchant_id = t.merchant_id WHERE c.id IS NULL",
    )
    assert orphans == [(0,)]
