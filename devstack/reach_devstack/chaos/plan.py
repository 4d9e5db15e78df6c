"""What a chaos run does and when: the options, and a seeded schedule of faults.

The schedule is drawn from one seed, up front, as the load generator plans its operations: a
seed replays the same sequence of faults at the same offsets from the start of the load (what
they hit depends on timing, as with any real fault). Process kills come every few seconds
throughout; every other kind comes in a shuffled cycle, so each kind happens at least once in
a run long enough for one cycle, however short.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = [
    "CYCLE_KINDS",
    "KIND_DESCRIPTIONS",
    "ChaosPlan",
    "Fault",
    "schedule",
]

# Every fault kind other than the kill -9, with what it does; the runner executes each
# (faults.py). "broker_restart" needs the durable broker: without it, the kind is left out and
# the report says so.
KIND_DESCRIPTIONS: dict[str, str] = {
    "kill": "kill -9 of a reach-sync router or syncer process, started again after a moment",
    "sigstop": "SIGSTOP of a reach-sync process past the session timeout, then SIGCONT",
    "redis_restart": "Redis restarted (it starts empty: no persistence, by design)",
    "redis_flushall": "FLUSHALL on Redis: every last-sent hash forgotten",
    "postgres_down": "Postgres stopped for 10-20 s, then started on the same data",
    "broker_restart": "the broker restarted on its durable storage",
    "reach_429": "Reach answers 429 with Retry-After to a share of requests (a storm)",
    "reach_5xx": "Reach answers 500/503 to a share of requests",
    "reach_status_lost": "Reach answers 500 to a share of batch status reads (GET /api/batches)",
    "reach_lost_answer": "Reach applies a share of requests and answers 503 (the answer lost)",
    "reach_hang": "Reach holds a share of requests past the client's timeout",
    "reach_drop": "Reach drops the connection of a share of requests mid-response",
    "reach_slow_batches": "Reach holds each batch in processing for seconds",
    "malformed": "malformed source events of every kind, and rows Reach must refuse",
}
CYCLE_KINDS = tuple(k for k in KIND_DESCRIPTIONS if k != "kill")


@dataclass(frozen=True)
class ChaosPlan:
    """The options of one run; ``changes`` counts source row changes (the row log's)."""

    seed: int = 1
    changes: int = 100_000
    # Load operations per second (each is one to several row changes).
    rate: float = 100.0
    routers: int = 2
    syncers: int = 2
    # Broker restarts need the durable broker: its topics in S3 on a SeaweedFS server (the
    # "s3" component), which keeps up with many small record batches where the former moto
    # server stalled consumer groups (docs/local-stack.md). Off, they are left out of the
    # schedule.
    durable_broker: bool = False
    # A kill -9 every this many seconds (uniform), of a random router or syncer.
    kill_every_s: tuple[float, float] = (3.0, 10.0)
    # How long a killed process stays down before it is started again.
    down_s: tuple[float, float] = (0.5, 3.0)
    # Between two faults of the cycle (uniform); each lasts FAULT_SECONDS of its kind.
    cycle_gap_s: tuple[float, float] = (6.0, 14.0)
    # The shop before the load starts: customers and transactions (Debezium's snapshot).
    seed_customers: int = 500
    seed_transactions: int = 1500
    # After the last fault: how long convergence may take before the run fails.
    settle_timeout_s: float = 300.0
    kinds: tuple[str, ...] = field(default=CYCLE_KINDS)

    def cycle_kinds(self) -> tuple[str, ...]:
        usable = [k for k in self.kinds if k in CYCLE_KINDS]
        return tuple(k for k in usable if self.durable_broker or k != "broker_restart")


# How long each kind lasts (uniform, seconds); the instantaneous ones have 0.
FAULT_SECONDS: dict[str, tuple[float, float]] = {
    "sigstop": (8.0, 12.0),  # past the local stack's 6 s session timeout
    "postgres_down": (10.0, 20.0),
    "broker_restart": (2.0, 5.0),
    "reach_429": (5.0, 15.0),
    "reach_5xx": (5.0, 15.0),
    "reach_status_lost": (10.0, 20.0),
    "reach_lost_answer": (5.0, 15.0),
    "reach_hang": (5.0, 10.0),
    "reach_drop": (5.0, 15.0),
    "reach_slow_batches": (10.0, 20.0),
}


@dataclass(frozen=True)
class Fault:
    """One fault: at ``at_s`` from the start of the load, lasting ``seconds``; ``pick`` chooses
    the target among the candidates (a process, say) so that a seed replays the same choice."""

    at_s: float
    kind: str
    seconds: float = 0.0
    pick: float = 0.0

    def describe(self) -> str:
        lasting = f" for {self.seconds:.1f} s" if self.seconds else ""
        return f"{self.at_s:7.1f} s  {self.kind}{lasting}"


def schedule(plan: ChaosPlan, horizon_s: float) -> list[Fault]:
    """The faults of the first ``horizon_s`` seconds of a run, in time order.

    The kinds other than kills: a shuffled cycle of all of them, one every ``cycle_gap_s`` after
    the previous one ended, and the cycle again when it is through; the first cycle is always
    completed, even past ``horizon_s``, so that every kind happens. Kills: one every
    ``kill_every_s``, until the horizon or the end of the first cycle, whichever is later.
    """
    rng = random.Random(plan.seed)  # noqa: S311 - a replayable schedule, not secrets
    faults: list[Fault] = []
    kinds = list(plan.cycle_kinds())
    at = rng.uniform(*plan.cycle_gap_s)
    first_cycle = True
    while kinds and (first_cycle or at < horizon_s):
        cycle = kinds[:]
        rng.shuffle(cycle)
        for kind in cycle:
            if not first_cycle and at >= horizon_s:
                break
            seconds = rng.uniform(*FAULT_SECONDS[kind]) if kind in FAULT_SECONDS else 0.0
            faults.append(Fault(at, kind, seconds, rng.random()))
            at += seconds + rng.uniform(*plan.cycle_gap_s)
        first_cycle = False
    # Kills go on for as long as anything else does: the first cycle may outlast the horizon.
    end = max([horizon_s, *(f.at_s + f.seconds for f in faults)])
    at = rng.uniform(*plan.kill_every_s)
    while at < end:
        faults.append(Fault(at, "kill", pick=rng.random()))
        at += rng.uniform(*plan.kill_every_s)
    return sorted(faults, key=lambda f: f.at_s)
