"""CPU seconds per named process group (or process) between two samples, from /proc.

A component's CPU time is the sum over every live process whose process group is the
component's (``/proc/PID/stat`` field 5) of its ``utime + stime`` (all its threads) plus its
``cutime + cstime``: the time of its children that exited *and were reaped* by it (and of their
reaped children). So a Postgres backend that ran and exited between the two samples counts,
through the postmaster that reaps it; a process whose parent is outside the group (the group's
leader, started by the bench) would vanish from the sum if it exited between the samples (it
does not here: the stacks stop after the measured parts). A child that exited but is not yet
reaped (a zombie) still shows its own times.

Besides groups, a meter takes single processes (``own``: that process's own time, every
thread, no children; for the bench process, which hosts reach-sync in the in-process parts)
and ``reaped`` processes: only their ``cutime + cstime``, the CPU of the children they reaped
between the samples (the bench reaps its `reach-sync run` children and the load generator's
process pool worker; a child still running at the second sample does not count yet).

The machine's total comes from the first line of /proc/stat (busy = all but idle and iowait),
so each figure can be read against wall seconds x CPUs.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CpuMeter",
    "CpuUsage",
    "GcTime",
    "cpu_during",
    "describe_gc",
    "format_usage",
    "gc_during",
]

TICKS = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1
_PROC = Path("/proc")


@dataclass(frozen=True)
class _Times:
    pgrp: int
    own: int
    reaped: int


def _read(pid: int) -> _Times | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    rest = text[text.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(v) for v in rest[11:15])
    return _Times(int(rest[2]), utime + stime, cutime + cstime)


def _all_processes() -> Iterator[_Times]:
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            times = _read(int(entry.name))
            if times is not None:
                yield times


def _machine_busy_ticks() -> int:
    fields = [int(v) for v in (_PROC / "stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    return sum(fields[:8]) - fields[3] - fields[4]


@dataclass(frozen=True)
class CpuUsage:
    """CPU seconds per name between the samples, the wall seconds and the machine's busy CPU
    seconds (of ``wall_s * cpus``)."""

    seconds: dict[str, float]
    wall_s: float
    machine_s: float
    cpus: int = CPUS

    def to_json(self) -> dict[str, object]:
        return {
            "cpu_s": {k: round(v, 2) for k, v in self.seconds.items()},
            "wall_s": round(self.wall_s, 2),
            "machine_busy_s": round(self.machine_s, 2),
            "cpus": self.cpus,
        }

    def __add__(self, other: CpuUsage) -> CpuUsage:
        names = dict.fromkeys([*self.seconds, *other.seconds])
        return CpuUsage(
            {n: self.seconds.get(n, 0.0) + other.seconds.get(n, 0.0) for n in names},
            self.wall_s + other.wall_s,
            self.machine_s + other.machine_s,
            self.cpus,
        )


@dataclass
class CpuMeter:
    """``start()``, then ``stop()`` returns the CPU each name used in between.

    ``groups``: name -> process group id; ``own``: name -> pid (its own time only);
    ``reaped``: name -> pid (the time of the children it reaped in between).
    """

    groups: Mapping[str, int] = field(default_factory=dict)
    own: Mapping[str, int] = field(default_factory=dict)
    reaped: Mapping[str, int] = field(default_factory=dict)
    _start: tuple[dict[str, int], float, int] | None = None

    def sample(self) -> dict[str, int]:
        """Clock ticks per name, now."""
        ticks = dict.fromkeys([*self.own, *self.reaped, *self.groups], 0)
        by_group = {pgid: name for name, pgid in self.groups.items()}
        if by_group:
            for times in _all_processes():
                name = by_group.get(times.pgrp)
                if name is not None:
                    ticks[name] += times.own + times.reaped
        for name, pid in self.own.items():
            times = _read(pid)
            ticks[name] += times.own if times else 0
        for name, pid in self.reaped.items():
            times = _read(pid)
            ticks[name] += times.reaped if times else 0
        return ticks

    def start(self) -> None:
        self._start = (self.sample(), time.perf_counter(), _machine_busy_ticks())

    def stop(self) -> CpuUsage:
        if self._start is None:
            raise RuntimeError("CpuMeter.stop() before start()")
        before, started, busy = self._start
        after = self.sample()
        return CpuUsage(
            {name: (after[name] - before.get(name, 0)) / TICKS for name in after},
            time.perf_counter() - started,
            (_machine_busy_ticks() - busy) / TICKS,
        )


class _Result:
    """Filled in when the ``cpu_during`` block ends."""

    usage: CpuUsage | None = None


@contextmanager
def cpu_during(meter: CpuMeter) -> Iterator[_Result]:
    """``with cpu_during(meter) as cpu: ...``; then ``cpu.usage`` (also if the block raised)."""
    result = _Result()
    meter.start()
    try:
        yield result
    finally:
        result.usage = meter.stop()


def format_usage(usage: CpuUsage) -> str:
    """``reach-sync 23.1 s, sandbox 9.2 s, ... (machine 41.0 s) of 2x25.0 s``."""
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in usage.seconds.items())
    return (
        f"{parts}; machine {usage.machine_s:.1f} s busy of {usage.cpus}\u00d7{usage.wall_s:.1f} s"
    )


@dataclass
class GcTime:
    """Wall time this process spent in Python's cyclic garbage collector, and how many
    collections of each generation: part of the in-process parts' reach-sync CPU, shown apart
    because its settings are the process's (consumer/cli/process_tuning.py)."""

    seconds: float = 0.0
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    # The longest single collection: a pause every Python thread waits out (latency's tail).
    longest_s: float = 0.0
    # CPU time of the collecting thread: below the wall time when the OS ran something else.
    cpu_s: float = 0.0
    _started: tuple[float, float] = (0.0, 0.0)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
        else:
            wall, cpu = self._started
            took = time.perf_counter() - wall
            self.seconds += took
            self.cpu_s += time.thread_time() - cpu
            self.longest_s = max(self.longest_s, took)
            self.collections[info["generation"]] += 1

    def to_json(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 3),
            "cpu_s": round(self.cpu_s, 3),
            "collections": self.collections,
            "longest_ms": round(self.longest_s * 1000, 1),
        }


def describe_gc(gc_time: Mapping[str, Any]) -> str:
    """One line from ``GcTime.to_json()`` (the summary keeps that form for every part)."""
    return (
        f"{gc_time['seconds']:.2f} s ({gc_time['cpu_s']:.2f} s of CPU) in "
        f"{'/'.join(map(str, gc_time['collections']))} collections (generations 0/1/2), the "
        f"longest {gc_time['longest_ms']:.0f} ms"
    )


@contextmanager
def gc_during() -> Iterator[GcTime]:
    """``with gc_during() as gc_time: ...``: collections by any thread of this process."""
    timer = GcTime()
    gc.callbacks.append(timer)
    try:
        yield timer
    finally:
        gc.callbacks.remove(timer)
