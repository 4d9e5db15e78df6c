"""How each kind of fault is done to the running stack and the reach-sync processes.

A fault runs in a worker thread of the run (run.py) for its whole duration, so a Postgres
outage does not hold the next kill back. Two faults never handle the same reach-sync process or
the same component at once: a kill or SIGSTOP whose chosen process is busy takes the next free
one, and any other fault whose target is busy is skipped and logged as such (the schedule stays
the seed's; what it hit is in the log).

Malformed input is injected while the routers' group is steady, and kept so until its dead
letters are due: a router killed or frozen holds every event of its partitions, good or bad,
for the local broker's handover (about 11 s, docs/local-stack.md), which would hide whether a
bad event held its partition. So the injection holds routers out of kills and SIGSTOPs (those
faults hit a syncer instead), waits until the last router change is ``ROUTERS_QUIET_S`` past,
injects, and keeps the hold ``DEAD_LETTER_DUE_S`` longer; the stall check is then strict. A
router's change is its restart, or its joining the group if that came later: a router started
while Postgres is down waits for it (with backoff) and rebalances the group only when it
subscribes, which can be well after its restart.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from reach_devstack.chaos.fleet import Fleet, Member
from reach_devstack.chaos.plan import ChaosPlan, Fault
from reach_devstack.stack import LocalStack

__all__ = ["DEAD_LETTER_DUE_S", "REACH_FAULTS", "ROUTERS_QUIET_S", "FaultLog", "Injector"]

# After a router came back from a kill or a SIGSTOP: the session timeout (6 s) for the old
# member to be dropped, then the broker's handover (about 11 s), with room to spare.
ROUTERS_QUIET_S = 20.0
# How long the routers stay steady after an injection: a malformed event's dead letter is due
# within 5 s (run.py, STALL_BOUND_S); the rest is margin.
DEAD_LETTER_DUE_S = 10.0
# An injection waits at most this long for the routers to be steady (a frozen router is
# thawed within 12 s and a killed one restarted within 3 s, so this is never reached unless a
# router keeps crashing); then the fault is skipped, and the run fails for a missing kind.
QUIET_WAIT_S = 120.0

# The sandbox's fault specs for each Reach kind (sandbox/reach_sandbox/README.md, "Faults").
# reach-sync's request timeout is the definition's destination.timeout_s, 30 s by default: a
# hang is longer, so the client gives up first.
REACH_FAULTS: dict[str, Mapping[str, Any]] = {
    "reach_429": {"kind": "rate_limit", "retry_after_seconds": 1, "rate": 0.5},
    "reach_5xx": {"kind": "error", "status": 500, "rate": 0.2},
    "reach_status_lost": {
        "kind": "error",
        "status": 500,
        "rate": 0.5,
        "method": "GET",
        "path_prefix": "/api/batches",
    },
    "reach_lost_answer": {"kind": "error", "status": 503, "rate": 0.2, "after_apply": True},
    "reach_hang": {"kind": "timeout", "seconds": 35.0, "rate": 0.05},
    "reach_drop": {"kind": "timeout", "seconds": 0.2, "drop": True, "rate": 0.1},
    "reach_slow_batches": {"kind": "batch_delay", "seconds": 3.0, "rate": 1.0},
}


@dataclass
class FaultLog:
    """Every fault as it started and ended, in seconds since the load began; printed as it goes
    and kept for the report."""

    started_at: float
    # The same moment on the wall clock, to place what carries wall-clock times (dead letters).
    started_wall: float = field(default_factory=time.time)
    lines: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    # (start, end, kind, target) of every fault done, for the stall check.
    windows: list[tuple[float, float, str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.started_at

    def say(self, text: str) -> None:
        line = f"{self.now():7.1f} s  {text}"
        with self._lock:
            self.lines.append(line)
        print(f"chaos: {line}", flush=True)

    def done(self, kind: str, start: float, target: str) -> None:
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.windows.append((start, self.now(), kind, target))

    def last_router_change(self) -> float | None:
        """When a router last came back from a kill -9 or a SIGSTOP (its group rebalanced)."""
        with self._lock:
            ends = [
                end
                for _, end, kind, target in self.windows
                if kind in ("kill", "sigstop") and target.startswith("router")
            ]
        return max(ends, default=None)

    def skip(self, kind: str, why: str) -> None:
        with self._lock:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
        self.say(f"{kind} skipped: {why}")


@dataclass
class Injector:
    """Does one Fault; ``malformed`` is the run's own injection of bad input (run.py)."""

    plan: ChaosPlan
    stack: LocalStack
    fleet: Fleet
    sandbox_url: str
    admin_token: str
    redis_url: str
    log: FaultLog
    malformed: Callable[[], str]
    # Runs a process start on the run's one long-lived spawning thread and waits for it: a
    # child dies with the thread that started it (process.py), and fault threads end.
    spawn: Callable[[Callable[[], None]], None]
    _busy: set[str] = field(default_factory=set)
    # Set while malformed input is injected: kills and SIGSTOPs leave the routers alone.
    _routers_held: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, fault: Fault) -> None:
        """Do ``fault`` (blocking for its duration); never raises: a fault that could not be
        done is logged, counted as skipped, and the run goes on."""
        with self._lock:
            target = self._target(fault)
            claimed = target not in self._busy
            self._busy.add(target)
        if not claimed:
            self.log.skip(fault.kind, f"{target} is busy with another fault")
            return
        start = self.log.now()
        try:
            self._do(fault, target)
        except Exception as exc:  # a fault's own failure is a finding, not the run's end
            self.log.skip(fault.kind, f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._release(target)
        self.log.done(fault.kind, start, target)

    def revive_crashed(self) -> list[str]:
        """Start again every member that ended on its own (not one a fault is handling): a
        crash is a finding, named with its exit code and log, and the run goes on."""
        revived = []
        for member in self.fleet.members:
            if member.alive() or not self._claim(member.name):
                continue
            try:
                if not member.alive():
                    code, log_path = member.exit_code(), member.log_paths[-1]
                    self.spawn(member.start)
                    revived.append(f"{member.name} (exit code {code}; log {log_path})")
            finally:
                self._release(member.name)
        return revived

    def _target(self, fault: Fault) -> str:
        """The process or component ``fault`` handles (under the lock: a hold on the routers
        is taken under it too, so no router kill is chosen after the hold began)."""
        if fault.kind in ("kill", "sigstop"):
            roles = ("syncer",) if self._routers_held else ("router", "syncer")
            return self.fleet.pick(fault.pick, roles, busy=self._busy).name
        if fault.kind.startswith("reach_"):
            return fault.kind
        if fault.kind.startswith("redis"):
            return "redis"
        return {"postgres_down": "postgres", "broker_restart": "broker"}.get(fault.kind, fault.kind)

    def _claim(self, target: str) -> bool:
        with self._lock:
            if target in self._busy:
                return False
            self._busy.add(target)
            return True

    def _release(self, target: str) -> None:
        with self._lock:
            self._busy.discard(target)

    def _member(self, name: str) -> Member:
        return next(m for m in self.fleet.members if m.name == name)

    def _do(self, fault: Fault, target: str) -> None:
        kind = fault.kind
        if kind == "kill":
            self._kill(self._member(target), random.Random(fault.pick))  # noqa: S311 - chaos
        elif kind == "sigstop":
            member = self._member(target)
            self.log.say(f"SIGSTOP {member.name} (pid {member.pid}) for {fault.seconds:.1f} s")
            member.freeze()
            time.sleep(fault.seconds)
            member.thaw()
            self.log.say(f"SIGCONT {member.name}")
        elif kind == "redis_restart":
            self.log.say("Redis restart")
            self.spawn(lambda: self.stack.restart_component("redis"))
        elif kind == "redis_flushall":
            self.log.say("Redis FLUSHALL")
            client = redis.Redis.from_url(self.redis_url, socket_timeout=5)
            try:
                client.flushall()
            finally:
                client.close()
        elif kind == "postgres_down":
            self._outage("postgres", fault.seconds)
        elif kind == "broker_restart":
            self._outage("broker", fault.seconds)
        elif kind in REACH_FAULTS:
            self._reach(kind, fault.seconds)
        elif kind == "malformed":
            self._inject_steady()
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    def _inject_steady(self) -> None:
        """The run's malformed input, while the routers' group is steady (the module's doc)."""
        with self._lock:
            self._routers_held = True
        try:
            self.log.say("malformed input: routers held out of kills until their group is steady")
            deadline = time.monotonic() + QUIET_WAIT_S
            while not self._routers_steady():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"routers not steady for {ROUTERS_QUIET_S:g} s")
                time.sleep(0.2)
            self.log.say(f"malformed input: {self.malformed()}")
            time.sleep(DEAD_LETTER_DUE_S)
        finally:
            with self._lock:
                self._routers_held = False

    def _routers_steady(self) -> bool:
        routers = self.fleet.routers()
        with self._lock:
            busy = any(router.name in self._busy for router in routers)
        if busy:
            return False
        joined = [router.subscribed_at() for router in routers]
        if None in joined:  # still starting: it joins the group, and rebalances it, later
            return False
        changes = [self.log.last_router_change()]
        changes += [at - self.log.started_wall for at in joined if at is not None]
        last = max((c for c in changes if c is not None), default=None)
        return last is None or self.log.now() - last >= ROUTERS_QUIET_S

    def _kill(self, member: Member, rng: random.Random) -> None:
        if not member.alive():
            self.log.say(f"kill -9 {member.name}: not running")
            return
        self.log.say(f"kill -9 {member.name} (pid {member.pid})")
        member.kill()
        time.sleep(rng.uniform(*self.plan.down_s))
        self.spawn(member.start)
        self.log.say(f"started {member.name} again (pid {member.pid})")

    def _outage(self, component: str, seconds: float) -> None:
        self.log.say(f"{component} stopped for {seconds:.1f} s")
        self.stack.stop_component(component)
        time.sleep(seconds)
        self.spawn(lambda: self.stack.start_component(component))
        self.log.say(f"{component} started again")
        # The embedded Debezium may give up while its database or broker is away; a Kafka
        # Connect worker would restart its task, so the run restarts the engine, and says so.
        if self.stack.health().get("debezium", "running") != "running":
            self.log.say("Debezium ended during the outage; starting it again")
            self.spawn(lambda: self.stack.start_component("debezium"))

    def _reach(self, kind: str, seconds: float) -> None:
        spec = REACH_FAULTS[kind]
        headers = {"authorization": f"Bearer {self.admin_token}"}
        with httpx.Client(base_url=self.sandbox_url, headers=headers, timeout=10) as http:
            fault_id = http.post("/_admin/faults", json=dict(spec)).raise_for_status().json()["id"]
            self.log.say(f"{kind} for {seconds:.1f} s: {dict(spec)}")
            try:
                time.sleep(seconds)
            finally:
                http.delete(f"/_admin/faults/{fault_id}").raise_for_status()
            self.log.say(f"{kind} over")
