"""The sample partner database: its schema (shop.sql) and a deterministic starting state.

The same seed number always gives the same rows, so a demo, a test and a benchmark can all
reason about "customer 17" and get the same person. Transactions fall on customers with a Zipf
skew: a few customers buy a lot and many never buy, which is both realistic and what exercises
reach-sync's coalescing and cohort logic.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

__all__ = [
    "SHOP_SQL",
    "SHOP_TABLES",
    "SeedResult",
    "ShopRows",
    "add_seed_arguments",
    "apply_schema",
    "generate_shop",
    "merchant_external_id",
    "run_seed_command",
    "seed",
    "zipf_rank",
]

SHOP_SQL = Path(__file__).with_name("shop.sql")
SHOP_TABLES = ("public.merchants", "public.customers", "public.transactions")
# Seeded timestamps count from a fixed day, so the rows are identical on every run.
SEED_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
# Skew of purchases over customers: with 1.1 about a third of customers never buy and the top
# 1% make about a fifth of the sales.
PURCHASE_SKEW = 1.1
CURRENCIES = ("USD", "EUR", "GBP")
MERCHANT_NAMES = ("Northwind Outfitters", "Bluebird Coffee", "Atlas Home", "Juniper Books")
FIRST_NAMES = (
    "Ada", "Alan", "Barbara", "Claude", "Dorothy", "Edsger", "Frances", "Grace", "Hedy",
    "Ivan", "Joan", "Ken", "Katherine", "Linus", "Margaret", "Niklaus", "Radia", "Tim",
)  # fmt: skip
LAST_NAMES = (
    "Lovelace", "Turing", "Liskov", "Shannon", "Vaughan", "Dijkstra", "Allen", "Hopper",
    "Lamarr", "Sutherland", "Clarke", "Thompson", "Johnson", "Torvalds", "Hamilton",
    "Wirth", "Perlman", "Berners-Lee",
)  # fmt: skip
# Seeded sales mostly completed; a few still pending or already refunded or cancelled.
STATUS_WEIGHTS = (("completed", 80), ("pending", 8), ("refunded", 7), ("cancelled", 5))

ExistingPolicy = Literal["skip", "replace"]


def merchant_external_id(merchant_id: int) -> str:
    """The id Reach knows a merchant (tenant) by: ``merchant-1``, ``merchant-2``, ..."""
    return f"merchant-{merchant_id}"


def zipf_rank(u: float, n: int, s: float) -> int:
    """A rank in 1..n with P(k) roughly proportional to 1/k**s, from a uniform ``u`` in [0, 1).

    Inverse of the continuous Zipf CDF: exact enough for workload skew, O(1) per draw, and a pure
    function of ``u`` so callers control the randomness.
    """
    if n < 1:
        raise ValueError("zipf_rank needs n >= 1")
    if s == 1.0:
        x = (n + 1) ** u
    else:
        top = (n + 1) ** (1.0 - s)
        x = (1.0 + u * (top - 1.0)) ** (1.0 / (1.0 - s))
    return min(n, max(1, int(x)))


@dataclass(frozen=True)
class ShopRows:
    """A whole starting state, as rows in column order of the COPY statements in ``seed``."""

    merchants: list[tuple[object, ...]]
    customers: list[tuple[object, ...]]
    transactions: list[tuple[object, ...]]


@dataclass(frozen=True)
class SeedResult:
    """Row counts after seeding; ``skipped`` when the shop already had data and was kept."""

    merchants: int
    customers: int
    transactions: int
    skipped: bool


def _person(rng: random.Random, customer_id: int) -> tuple[str, str, str, str | None]:
    first = rng.choice(FIRST_NAMES)
    last = rng.choice(LAST_NAMES)
    email = f"{first}.{last}.{customer_id}@example.com".lower()
    phone = f"+1555{rng.randrange(10**7):07d}" if rng.random() < 0.7 else None
    return first, last, email, phone


def generate_shop(merchants: int, customers: int, transactions: int, rng_seed: int) -> ShopRows:
    """The rows of a shop; the same arguments always give the same rows."""
    rng = random.Random(rng_seed)  # noqa: S311 - sample data, not secrets
    merchant_rows: list[tuple[object, ...]] = [
        (
            m,
            MERCHANT_NAMES[(m - 1) % len(MERCHANT_NAMES)],
            merchant_external_id(m),
            CURRENCIES[(m - 1) % len(CURRENCIES)],
            SEED_EPOCH,
            SEED_EPOCH,
        )
        for m in range(1, merchants + 1)
    ]
    customer_rows: list[tuple[object, ...]] = []
    created: dict[int, tuple[int, datetime]] = {}
    for cid in range(1, customers + 1):
        merchant = rng.randint(1, merchants)
        first, last, email, phone = _person(rng, cid)
        created_at = SEED_EPOCH + timedelta(seconds=rng.uniform(0, 365 * 86400))
        updated_at = created_at + timedelta(seconds=rng.uniform(0, 30 * 86400))
        notes = "prefers email" if rng.random() < 0.1 else None
        opt_in = rng.random() < 0.6
        customer_rows.append(
            (cid, merchant, email, first, last, phone, opt_in, notes, created_at, updated_at)
        )
        created[cid] = (merchant, created_at)

    statuses = [status for status, _ in STATUS_WEIGHTS]
    weights = [weight for _, weight in STATUS_WEIGHTS]
    transaction_rows: list[tuple[object, ...]] = []
    for tid in range(1, transactions + 1):
        cid = zipf_rank(rng.random(), customers, PURCHASE_SKEW)
        merchant, customer_created = created[cid]
        status = rng.choices(statuses, weights)[0]
        amount = max(50, int(rng.lognormvariate(8.0, 1.0)))
        created_at = customer_created + timedelta(seconds=rng.uniform(0, 200 * 86400))
        updated_at = created_at
        if status != "pending":
            updated_at += timedelta(seconds=rng.uniform(60, 5 * 86400))
        currency = CURRENCIES[(merchant - 1) % len(CURRENCIES)]
        transaction_rows.append(
            (tid, merchant, cid, status, amount, currency, created_at, updated_at)
        )
    return ShopRows(merchant_rows, customer_rows, transaction_rows)


def apply_schema(conn: psycopg.Connection[TupleRow]) -> None:
    """Create the shop's tables if missing (shop.sql is idempotent)."""
    # The file's text as bytes: psycopg takes a whole script that way, without parameters.
    conn.execute(SHOP_SQL.read_bytes())


def _counts(conn: psycopg.Connection[TupleRow]) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM public.merchants), (SELECT count(*) FROM public.customers),"
        " (SELECT count(*) FROM public.transactions)"
    ).fetchone()
    if row is None:
        raise RuntimeError("seed: an aggregate query returned no row")
    return int(row[0]), int(row[1]), int(row[2])


def _copy(
    conn: psycopg.Connection[TupleRow], statement: sql.SQL, rows: list[tuple[object, ...]]
) -> None:
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def seed(
    dsn: str,
    merchants: int = 3,
    customers: int = 200,
    transactions: int = 600,
    rng_seed: int = 42,
    *,
    existing: ExistingPolicy = "skip",
) -> SeedResult:
    """Create the shop schema and fill it, in one transaction.

    When the shop already has merchants, ``existing="skip"`` keeps everything (calling seed twice
    is harmless) and ``"replace"`` empties the tables first. It empties them with DELETE, not
    TRUNCATE: Debezium skips truncate events by default, so downstream would never learn that
    the old rows are gone; deletes reach it as delete events and tombstones.
    """
    if merchants < 1 or customers < 0 or transactions < 0:
        raise ValueError("seed: need at least one merchant and no negative counts")
    if transactions and not customers:
        raise ValueError("seed: transactions need customers")
    with psycopg.connect(dsn) as conn:
        apply_schema(conn)
        # Serialize concurrent seeds of the same database (the second one then skips).
        conn.execute("LOCK TABLE public.merchants IN EXCLUSIVE MODE")
        current = _counts(conn)
        if current[0] > 0:
            if existing == "skip":
                return SeedResult(*current, skipped=True)
            for table in ("transactions", "customers", "merchants"):
                conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier("public", table)))
        rows = generate_shop(merchants, customers, transactions, rng_seed)
        _copy(
            conn,
            sql.SQL(
                "COPY public.merchants (id, name, external_id, currency, created_at, updated_at)"
                " FROM STDIN"
            ),
            rows.merchants,
        )
        _copy(
            conn,
            sql.SQL(
                "COPY public.customers (id, merchant_id, email, first_name, last_name, phone,"
                " marketing_opt_in, internal_notes, created_at, updated_at) FROM STDIN"
            ),
            rows.customers,
        )
        _copy(
            conn,
            sql.SQL(
                "COPY public.transactions (id, merchant_id, customer_id, status, amount_cents,"
                " currency, created_at, updated_at) FROM STDIN"
            ),
            rows.transactions,
        )
        # Explicit ids leave the identity sequences behind; new rows must continue after them.
        for table in ("merchants", "customers", "transactions"):
            conn.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence({name}, 'id'),"
                    " coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
                ).format(name=sql.Literal(f"public.{table}"), table=sql.Identifier("public", table))
            )
    return SeedResult(len(rows.merchants), len(rows.customers), len(rows.transactions), False)


def add_seed_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``reach-sync dev seed`` (the caller supplies the database)."""
    parser.add_argument("--merchants", type=int, default=3)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--transactions", type=int, default=600)
    parser.add_argument("--seed", type=int, default=42, help="random seed; same seed, same rows")
    parser.add_argument(
        "--replace", action="store_true", help="delete existing shop rows first (else keep them)"
    )


def run_seed_command(args: argparse.Namespace, dsn: str) -> int:
    """Run ``seed`` from parsed ``add_seed_arguments`` options; prints one line, returns 0."""
    result = seed(
        dsn,
        merchants=args.merchants,
        customers=args.customers,
        transactions=args.transactions,
        rng_seed=args.seed,
        existing="replace" if args.replace else "skip",
    )
    verb = "kept existing" if result.skipped else "seeded"
    print(
        f"{verb}: {result.merchants} merchants, {result.customers} customers, "
        f"{result.transactions} transactions"
    )
    return 0
