"""A steady, realistic stream of changes to the sample shop, for demos, benchmarks and soak tests.

Each operation is one thing a shop does: a sign-up, a sale, a profile edit, an order moving
through pending -> completed -> refunded (or cancelled), a sale re-attributed to another
customer, a purge. Some are deliberately dull for reach-sync: updates that change nothing, or
only the unmapped ``internal_notes``, must not cause a send. Hot customers (Zipf) get bursts of
edits, which is what windows and coalescing are for.

Operations are paced by a schedule (``rate`` per second, evenly spaced, catching up at most
``MAX_LAG_S`` behind) and run by a few workers, each with its own connection. Every operation is
planned up front from the seed (its kind and its own random stream), so a seed replays the same
sequence of intentions; what they hit depends on the database, as with real traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg import errors, sql
from psycopg.rows import TupleRow

from reach_devstack.shop import FIRST_NAMES, LAST_NAMES, zipf_rank

__all__ = [
    "DEFAULT_MIX",
    "OPERATIONS",
    "LoadStats",
    "Pacer",
    "Plan",
    "Planner",
    "add_load_arguments",
    "next_status",
    "run_load",
    "run_load_command",
]

# Relative weights of the operations; each is one database transaction except a burst, which
# is several commits on one hot customer.
DEFAULT_MIX: Mapping[str, float] = {
    "customer_insert": 10,
    "customer_update": 16,
    "customer_noop_update": 5,
    "customer_unmapped_update": 5,
    "customer_burst": 3,
    "customer_delete": 2,
    "transaction_insert": 25,
    "transaction_advance": 24,
    "transaction_move": 4,
    "transaction_delete": 6,
}
OPERATIONS = tuple(DEFAULT_MIX)
# Skews: which customers buy and get edited (mild), and which get bursts (only the very top).
ACTIVITY_SKEW = 1.1
BURST_SKEW = 2.0
BURST_UPDATES = (3, 8)
# A worker that fell behind the schedule catches up at most this much, then the schedule moves
# on: the generator reports a lower achieved rate instead of a stampede.
MAX_LAG_S = 1.0
# Lifecycle odds: a pending order completes more often than it is cancelled.
CANCEL_SHARE = 0.15
REFUND_SHARE = 0.25
DEFAULT_CONCURRENCY = 4
# A database that went away is retried at this pace until the run ends (outage tests).
RECONNECT_DELAY_S = 0.5
# Errors a concurrent operation can cause; the operation is counted as a conflict and skipped.
_CONFLICTS = (
    errors.ForeignKeyViolation,
    errors.DeadlockDetected,
    errors.SerializationFailure,
    errors.LockNotAvailable,
)
_CUSTOMER_FIELDS = ("email", "phone", "first_name", "last_name", "marketing_opt_in")

Connection = psycopg.AsyncConnection[TupleRow]


def next_status(current: str, u: float) -> str | None:
    """Where a transaction goes next from ``current``, given a uniform ``u``; None if terminal."""
    if current == "pending":
        return "cancelled" if u < CANCEL_SHARE else "completed"
    if current == "completed":
        return "refunded"
    return None


@dataclass(frozen=True)
class Plan:
    """One operation decided ahead: its kind and its own random stream."""

    kind: str
    rng: random.Random


class Planner:
    """The seeded sequence of operations: the same seed gives the same kinds and choices.

    A seed of None draws a fresh sequence each time.
    """

    def __init__(self, rng_seed: int | None, mix: Mapping[str, float] = DEFAULT_MIX) -> None:
        unknown = set(mix) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"load: unknown operations {sorted(unknown)}")
        if not any(w > 0 for w in mix.values()):
            raise ValueError("load: the mix needs at least one positive weight")
        self._rng = random.Random(rng_seed)  # noqa: S311 - workload, not secrets
        self._kinds = list(mix)
        self._cumulative = list(_accumulate([mix[k] for k in self._kinds]))

    def __iter__(self) -> Iterator[Plan]:
        return self

    def __next__(self) -> Plan:
        kind = self._rng.choices(self._kinds, cum_weights=self._cumulative)[0]
        return Plan(kind, random.Random(self._rng.getrandbits(64)))  # noqa: S311


def _accumulate(weights: list[float]) -> Iterator[float]:
    total = 0.0
    for weight in weights:
        total += max(0.0, weight)
        yield total


class Pacer:
    """Evenly spaced start times at ``rate`` per second, never more than ``max_lag_s`` behind.

    ``next_start(now)`` hands out the next slot; pure arithmetic, so it is tested without a clock.
    """

    def __init__(self, rate: float, start: float, max_lag_s: float = MAX_LAG_S) -> None:
        if rate <= 0:
            raise ValueError("load: rate must be positive")
        self.interval = 1.0 / rate
        self._next = start
        self._max_lag = max_lag_s
        self.dropped = 0

    def next_start(self, now: float) -> float:
        behind = now - self._max_lag
        if self._next < behind:
            skipped = math.floor((behind - self._next) / self.interval)
            self.dropped += skipped
            self._next += skipped * self.interval
        slot = self._next
        self._next += self.interval
        return slot


@dataclass
class LoadStats:
    """What a run did: operations per kind, and those that found nothing or lost a race."""

    done: Counter[str] = field(default_factory=Counter)
    missed: Counter[str] = field(default_factory=Counter)
    conflicts: Counter[str] = field(default_factory=Counter)
    commits: int = 0
    reconnects: int = 0
    dropped: int = 0
    elapsed_s: float = 0.0

    @property
    def operations(self) -> int:
        """Operations attempted: done, missed or conflicted."""
        return sum(self.done.values()) + sum(self.missed.values()) + sum(self.conflicts.values())

    @property
    def rate(self) -> float:
        return self.operations / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self, target_rate: float) -> str:
        line = (
            f"load: {self.elapsed_s:6.1f} s {self.operations} ops ({self.rate:.1f}/s, target "
            f"{target_rate:g}/s), {self.commits} commits, {sum(self.missed.values())} missed, "
            f"{sum(self.conflicts.values())} conflicts"
        )
        if self.dropped:
            line += f", {self.dropped} slots dropped (the database cannot keep up)"
        return line

    def __str__(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.done.most_common())
        return (
            f"{self.operations} operations in {self.elapsed_s:.1f} s ({self.rate:.1f}/s), "
            f"{self.commits} commits, {sum(self.missed.values())} missed, "
            f"{sum(self.conflicts.values())} conflicts; done: {kinds}"
        )


@dataclass
class _ShopView:
    """What operations need to aim: id ranges (grown by inserts) and the merchants."""

    merchant_ids: list[int]
    max_customer_id: int
    max_transaction_id: int


# --- operations: each returns the number of commits it made, or 0 when it found nothing -------


async def _customer_insert(conn: Connection, rng: random.Random, view: _ShopView) -> int:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    email = f"{first}.{last}.{rng.getrandbits(32):08x}@example.com".lower()
    phone = f"+1555{rng.randrange(10**7):07d}" if rng.random() < 0.7 else None
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO customers (merchant_id, email, first_name, last_name, phone,"
            " marketing_opt_in) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (rng.choice(view.merchant_ids), email, first, last, phone, rng.random() < 0.6),
        )
        row = await cur.fetchone()
    if row is not None:
        view.max_customer_id = max(view.max_customer_id, int(row[0]))
    return 1


def _active_customer(rng: random.Random, view: _ShopView, skew: float = ACTIVITY_SKEW) -> int:
    return zipf_rank(rng.random(), max(1, view.max_customer_id), skew)


def _customer_change(rng: random.Random) -> tuple[sql.Composable, tuple[object, ...]]:
    """A real edit of one mapped field, with updated_at moving as an application would."""
    column = rng.choice(_CUSTOMER_FIELDS)
    if column == "marketing_opt_in":
        return sql.SQL("marketing_opt_in = NOT marketing_opt_in"), ()
    if column == "email":
        value: object = f"user.{rng.getrandbits(32):08x}@example.com"
    elif column == "phone":
        value = f"+1555{rng.randrange(10**7):07d}" if rng.random() < 0.9 else None
    else:
        value = rng.choice(FIRST_NAMES if column == "first_name" else LAST_NAMES)
    return sql.SQL("{} = %s").format(sql.Identifier(column)), (value,)


async def _update_customer(
    conn: Connection, customer_id: int, assignment: sql.Composable, params: tuple[object, ...]
) -> int:
    async with conn.transaction():
        cur = await conn.execute(
            sql.SQL("UPDATE customers SET {} WHERE id = %s").format(assignment),
            (*params, customer_id),
        )
    return 1 if cur.rowcount else 0


async def _customer_update(conn: Connection, rng: random.Random, view: _ShopView) -> int:
    assignment, params = _customer_change(rng)
    touched = sql.SQL("{}, updated_at = now()").format(assignment)
    return await _update_customer(conn, _active_customer(rng, view), touched, params)


async def _customer_noop_update(conn: Connection, rng: random.Random, view: _ShopView) -> int:
    """UPDATE ... SET email = email: Debezium still emits an update, with nothing changed."""
    return await _update_customer(conn, _active_customer(rng, view), sql.SQL("email = email"), ())


async def _customer_unmapped_update(conn: Connection, rng: random.Random, view: _ShopView) -> int:
    """Only internal_notes (never mapped) changes, and updated_at stays: nothing to sync."""
    note = rng.choice(("called about delivery", "VIP", "asked for invoice", None))
    assignment = sql.SQL("internal_notes = %s")
    return await _update_customer(conn, _active_customer(rng, view), assignment, (note,))


async def _customer_burst(conn: Connection, rng: random.Random, view: _ShopView) -> int:
    """Several edits of one hot customer in quick succession, each its own commit."""
    customer_id = _active_customer(rng, view, BURST_SKEW)
    commits = 0
    for _ in range(rng.randint(*BURST_UPDATES)):
        assignment, params = _customer_change(rng)
        touched = sql.SQL("{}, updated_at = now()").format(assignment)
        commits += await _update_customer(conn, customer_id, touched, params)
    return commits


async def _customer_delete(conn: Connection, rng: random.Random, view: _ShopView) -> int:
    """Delete a customer who never bought (customers with sales cannot be deleted)."""
    start = rng.randint(1, max(1, view.max_customer_id))
    async with conn.transaction():
        cur = await conn.execute(
            "DELETE FROM customers WHERE id = ("
            " SELECT c.id FROM customers c WHERE c.id >= %s"
            " AND NOT EXISTS (SELECT 1 FROM transactions t WHERE t.customer_id = c.id)"
            " ORDER BY c.id LIMIT 1 FOR UPDATE SKIP LOCKED)",
            (start,),
        )
    return 1 if cur.rowcount else 0


async def _transaction_insert(conn: Connection, rng: random.Random, view: _ShopView) -> int:
    amount = max(50, int(rng.lognormvariate(8.0, 1.0)))
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO transactions (merchant_id, customer_id, amount_cents, currency)"
            " SELECT c.merchant_id, c.id, %s, m.currency FROM customers c"
            " JOIN merchants m ON m.id = c.merchant_id WHERE c.id = %s RETURNING id",
            (amount, _active_customer(rng, view)),
        )
        row = await cur.fetchone()
    if row is None:
        return 0
    view.max_transaction_id = max(view.max_transaction_id, int(row[0]))
    return 1


async def _transaction_advance(conn: Connection, rng: random.Random, view: _ShopView) -> int:
    """One step of the lifecycle: settle an old pending order, or refund a completed one."""
    if rng.random() < REFUND_SHARE:
        pick = sql.SQL("status = 'completed' AND id >= %s ORDER BY id")
        current, param = "completed", rng.randint(1, max(1, view.max_transaction_id))
    else:
        # Oldest pending first, give or take: orders settle roughly in arrival order.
        pick = sql.SQL("status = 'pending' ORDER BY id OFFSET %s")
        current, param = "pending", rng.randint(0, 4)
    query = sql.SQL(
        "UPDATE transactions SET status = %s, updated_at = now() WHERE id = ("
        " SELECT id FROM transactions WHERE {} LIMIT 1 FOR UPDATE SKIP LOCKED)"
    ).format(pick)
    async with conn.transaction():
        cur = await conn.execute(query, (next_status(current, rng.random()), param))
    return 1 if cur.rowcount else 0


async def _transaction_move(conn: Connection, rng: random.Random, view: _ShopView) -> int:
    """Re-attribute a sale to another customer of the same merchant (both must be resynced)."""
    start = rng.randint(1, max(1, view.max_transaction_id))
    target_start = rng.randint(1, max(1, view.max_customer_id))
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT id, merchant_id, customer_id FROM transactions WHERE id >= %s"
            " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
            (start,),
        )
        sale = await cur.fetchone()
        if sale is None:
            return 0
        cur = await conn.execute(
            "SELECT id FROM customers WHERE merchant_id = %s AND id >= %s AND id <> %s"
            " ORDER BY id LIMIT 1",
            (sale[1], target_start, sale[2]),
        )
        target = await cur.fetchone()
        if target is None:
            return 0
        await conn.execute(
            "UPDATE transactions SET customer_id = %s, updated_at = now() WHERE id = %s",
            (target[0], sale[0]),
        )
    return 1


async def _transaction_delete(conn: Connection, rng: random.Random, view: _ShopView) -> int:
    start = rng.randint(1, max(1, view.max_transaction_id))
    async with conn.transaction():
        cur = await conn.execute(
            "DELETE FROM transactions WHERE id = ("
            " SELECT id FROM transactions WHERE id >= %s"
            " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)",
            (start,),
        )
    return 1 if cur.rowcount else 0


_Operation = Callable[[Connection, random.Random, _ShopView], Awaitable[int]]
_OPERATIONS: Mapping[str, _Operation] = {
    "customer_insert": _customer_insert,
    "customer_update": _customer_update,
    "customer_noop_update": _customer_noop_update,
    "customer_unmapped_update": _customer_unmapped_update,
    "customer_burst": _customer_burst,
    "customer_delete": _customer_delete,
    "transaction_insert": _transaction_insert,
    "transaction_advance": _transaction_advance,
    "transaction_move": _transaction_move,
    "transaction_delete": _transaction_delete,
}


# --- the run -----------------------------------------------------------------------------------


async def _load_view(dsn: str) -> _ShopView:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT id FROM merchants ORDER BY id")
        merchants = [int(r[0]) for r in await cur.fetchall()]
        cur = await conn.execute(
            "SELECT coalesce((SELECT max(id) FROM customers), 0),"
            " coalesce((SELECT max(id) FROM transactions), 0)"
        )
        row = await cur.fetchone()
    if not merchants or row is None:
        raise RuntimeError("load: the shop has no merchants; run the seed first")
    return _ShopView(merchants, int(row[0]), int(row[1]))


@dataclass
class _Run:
    """Shared by the workers of one run."""

    dsn: str
    planner: Planner
    pacer: Pacer
    deadline: float
    view: _ShopView
    stats: LoadStats

    async def worker(self) -> None:
        conn: Connection | None = None
        try:
            while True:
                now = time.monotonic()
                start = self.pacer.next_start(now)
                if start >= self.deadline or now >= self.deadline:
                    return
                # Planned with its slot, so the n-th slot always runs the n-th plan.
                plan = next(self.planner)
                await asyncio.sleep(max(0.0, start - time.monotonic()))
                conn = await self._execute(conn, plan)
        finally:
            if conn is not None:
                await conn.close()

    async def _execute(self, conn: Connection | None, plan: Plan) -> Connection | None:
        """Run one planned operation and count its outcome; returns the connection to reuse."""
        try:
            if conn is None or conn.closed:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            commits = await _OPERATIONS[plan.kind](conn, plan.rng, self.view)
        except _CONFLICTS:
            self.stats.conflicts[plan.kind] += 1
            return conn
        except psycopg.OperationalError:
            # The database went away (or refused us): count it, wait, reconnect next time.
            self.stats.reconnects += 1
            if conn is not None:
                await conn.close()
            await asyncio.sleep(RECONNECT_DELAY_S)
            return None
        if commits:
            self.stats.done[plan.kind] += 1
            self.stats.commits += commits
        else:
            self.stats.missed[plan.kind] += 1
        return conn


async def _report(
    run: _Run, started: float, every_s: float, target: float, out: Callable[[str], None]
) -> None:
    while True:
        await asyncio.sleep(every_s)
        run.stats.elapsed_s = time.monotonic() - started
        run.stats.dropped = run.pacer.dropped
        out(run.stats.summary(target))


async def _run_load(
    dsn: str,
    rate: float,
    seconds: float,
    rng_seed: int | None,
    concurrency: int,
    mix: Mapping[str, float],
    progress_every_s: float,
    progress: Callable[[str], None] | None,
) -> LoadStats:
    view = await _load_view(dsn)
    started = time.monotonic()
    run = _Run(
        dsn=dsn,
        planner=Planner(rng_seed, mix),
        pacer=Pacer(rate, started),
        deadline=started + seconds,
        view=view,
        stats=LoadStats(),
    )
    reporter = None
    if progress is not None and progress_every_s > 0:
        reporter = asyncio.create_task(_report(run, started, progress_every_s, rate, progress))
    try:
        await asyncio.gather(*(run.worker() for _ in range(concurrency)))
    finally:
        if reporter is not None:
            reporter.cancel()
        run.stats.elapsed_s = time.monotonic() - started
        run.stats.dropped = run.pacer.dropped
    if progress is not None:
        progress(run.stats.summary(rate))
    return run.stats


def run_load(
    dsn: str,
    rate: float,
    seconds: float,
    rng_seed: int | None = 0,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    mix: Mapping[str, float] = DEFAULT_MIX,
    progress_every_s: float = 5.0,
    progress: Callable[[str], None] | bool = True,
) -> LoadStats:
    """Change the shop at ``rate`` operations per second for ``seconds`` (``math.inf``: until
    interrupted); returns what was done. Needs a seeded shop (``reach_devstack.shop.seed``).

    ``progress``: True prints a line every ``progress_every_s`` and at the end, False is silent,
    a callable receives those lines instead.
    """
    if seconds <= 0:
        raise ValueError("load: seconds must be positive")
    if concurrency < 1:
        raise ValueError("load: concurrency must be at least 1")
    out = _progress_output(progress)
    return asyncio.run(
        _run_load(dsn, rate, seconds, rng_seed, concurrency, mix, progress_every_s, out)
    )


def _progress_output(progress: Callable[[str], None] | bool) -> Callable[[str], None] | None:
    if callable(progress):
        return progress
    return _print_flushed if progress else None


def _print_flushed(line: str) -> None:
    print(line, flush=True)


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``reach-sync dev load`` (the caller supplies the database)."""
    parser.add_argument("--rate", type=float, default=50.0, help="operations per second")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="how long; 0 runs until interrupted"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the operation plan")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)


def run_load_command(args: argparse.Namespace, dsn: str) -> int:
    """Run ``run_load`` from parsed ``add_load_arguments`` options; progress goes to stdout."""
    seconds = math.inf if args.seconds == 0 else args.seconds
    try:
        stats = run_load(
            dsn,
            rate=args.rate,
            seconds=seconds,
            rng_seed=args.seed,
            concurrency=args.concurrency,
            progress_every_s=1.0,
        )
    except KeyboardInterrupt:
        return 130
    for kind in OPERATIONS:
        print(
            f"  {kind:26} {stats.done[kind]:7} done {stats.missed[kind]:5} missed"
            f" {stats.conflicts[kind]:4} conflicts"
        )
    return 0
