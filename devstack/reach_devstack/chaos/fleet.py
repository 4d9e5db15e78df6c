"""The reach-sync processes of a chaos run: routers and syncers, each a real ``reach-sync run``.

A member can be killed (``kill -9``: no drain, no commit, no LeaveGroup), stopped and continued
(SIGSTOP/SIGCONT: frozen past its session timeout, it wakes up evicted), and started again;
every start writes a log of its own, which the run scans at the end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from reach_devstack.process import ManagedProcess, ProcessSpec

__all__ = ["Fleet", "Member"]

# A member asked to stop at the end of a run gets this long to drain and commit.
STOP_GRACE_S = 60.0
# The router's log line once it has subscribed to its group (consumer/router/loop.py): a router
# started while its database is down waits for it first, and joins the group only then.
ROUTER_SUBSCRIBED = "router subscribed to"


@dataclass
class Member:
    name: str
    role: str
    config: Path
    env: Mapping[str, str]
    log_dir: Path
    cwd: Path
    starts: int = 0
    kills: int = 0
    log_paths: list[Path] = field(default_factory=list)
    _process: ManagedProcess | None = None
    _subscribed: dict[Path, float] = field(default_factory=dict)

    def start(self) -> None:
        self.starts += 1
        log_path = self.log_dir / f"{self.name}.{self.starts}.log"
        self.log_paths.append(log_path)
        argv = [sys.executable, "-m", "consumer.cli.main", "run", "--config", str(self.config)]
        argv += ["--role", self.role]
        spec = ProcessSpec(f"reach-sync-{self.name}", argv, log_path, self.env, self.cwd)
        self._process = ManagedProcess(spec)
        self._process.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def subscribed_at(self) -> float | None:
        """When the current process's router subscribed to its group (epoch seconds, from its
        JSON log), or None if it has not yet."""
        if not self.log_paths:
            return None
        path = self.log_paths[-1]
        if path not in self._subscribed:
            try:
                with path.open(encoding="utf-8", errors="replace") as lines:
                    for line in lines:
                        if ROUTER_SUBSCRIBED in line and line.startswith("{"):
                            ts = json.loads(line)["ts"]
                            self._subscribed[path] = datetime.fromisoformat(ts).timestamp()
                            break
            except (OSError, ValueError, KeyError):
                return None
        return self._subscribed.get(path)

    def exit_code(self) -> int | None:
        return None if self._process is None else self._process.exit_code()

    def kill(self) -> None:
        """``kill -9`` of the process itself, as an orchestrator's hard stop would."""
        if self._process is not None and self._process.alive():
            self.kills += 1
            self._process.signal(signal.SIGKILL)
            self._process.wait(10.0)

    def freeze(self) -> None:
        if self._process is not None:
            self._process.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._process is not None and self.pid is not None:
            # signal() skips a process that is not running; a stopped one still is.
            os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        """The end of the run: SIGTERM (drain, commit), then SIGKILL after the grace."""
        if self._process is not None:
            self.thaw()
            self._process.stop(grace_s=STOP_GRACE_S)


@dataclass
class Fleet:
    members: list[Member]

    @classmethod
    def of(
        cls,
        routers: int,
        syncers: int,
        config: Path,
        env: Mapping[str, str],
        log_dir: Path,
        cwd: Path,
    ) -> Fleet:
        members = [
            Member(f"{role}-{n}", role, config, env, log_dir, cwd)
            for role, count in (("router", routers), ("syncer", syncers))
            for n in range(1, count + 1)
        ]
        return cls(members)

    def start(self) -> None:
        for member in self.members:
            member.start()

    def pick(
        self,
        u: float,
        roles: tuple[str, ...] = ("router", "syncer"),
        busy: Collection[str] = (),
    ) -> Member:
        """The member a fault's ``pick`` (uniform in [0, 1)) chooses among those of ``roles``;
        if another fault is busy with it (``busy`` names), the next free one of them in order,
        so that the fault hits another process rather than none (the chosen one if all are
        busy)."""
        among = [m for m in self.members if m.role in roles]
        first = min(int(u * len(among)), len(among) - 1)
        for step in range(len(among)):
            member = among[(first + step) % len(among)]
            if member.name not in busy:
                return member
        return among[first]

    def routers(self) -> list[Member]:
        return [m for m in self.members if m.role == "router"]

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def log_paths(self) -> list[Path]:
        return [p for m in self.members for p in m.log_paths]
