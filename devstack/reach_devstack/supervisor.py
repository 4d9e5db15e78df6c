"""The process behind ``reach-sync dev up``: owns the stack, records its state, stops it on request.

The stack's servers are this process's children and die with it (parent-death signal), so
``dev down`` only has to stop this one process; even ``kill -9`` of it leaves nothing behind.
Its state file is how ``dev up``, ``dev status`` and ``dev down`` (other processes) see the stack.
It also carries out ``dev stop|start|restart COMPONENT``, asked through files (``control.py``),
and after each rewrites the state: the components' health, their pids, "ready" or "degraded".
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

from reach_devstack import control
from reach_devstack.process import ComponentError
from reach_devstack.stack import LocalStack, StackEndpoints, StackOptions

__all__ = ["STATE_FILE", "options_from_json", "options_to_json", "read_state", "supervise"]

STATE_FILE = "stack.json"
# How often the supervisor looks for control requests and checks that its children are still
# running (a poll of each child and a directory listing: nothing for a 2-core machine).
POLL_INTERVAL_S = 0.2


class _StopRequested(Exception):
    """Raised by the signal handler only while starting, to abandon a start in progress."""


def options_to_json(options: StackOptions) -> str:
    data = asdict(options)
    data["state_dir"] = str(options.state_dir)
    data["reach_schemas"] = None if options.reach_schemas is None else str(options.reach_schemas)
    return json.dumps(data)


def options_from_json(text: str) -> StackOptions:
    """The options as ``options_to_json`` wrote them (JSON has no tuples and no paths)."""
    data = json.loads(text)
    data["state_dir"] = Path(data["state_dir"])
    if data.get("reach_schemas") is not None:
        data["reach_schemas"] = Path(data["reach_schemas"])
    data["tenants"] = tuple(tuple(pair) for pair in data.get("tenants", ()))
    data["debezium_tables"] = tuple(data.get("debezium_tables", ()))
    return StackOptions(**data)


def read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state


def _write_state(state_dir: Path, **state: Any) -> None:
    """Atomic replace, private to the owner: the file holds the local stack's credentials."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{STATE_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"updated_at": time.time(), **state}, fh, indent=2)
    tmp.replace(state_dir / STATE_FILE)


def supervise(options: StackOptions, on_ready: Any = None) -> int:
    """Start the stack, keep its state file current, stop it on SIGTERM/SIGINT. Returns exit code.

    ``on_ready`` (optional) is called with the endpoints once everything is up; the foreground
    mode of ``dev up`` uses it to print them.
    """
    state_dir = options.state_dir.resolve()
    stop = threading.Event()
    starting = True

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if starting:
            raise _StopRequested

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    base = {"supervisor_pid": os.getpid(), "options": json.loads(options_to_json(options))}
    _write_state(state_dir, status="starting", **base)
    stack = LocalStack(options)
    try:
        try:
            endpoints = stack.start()
        except ComponentError as exc:
            _write_state(state_dir, status="failed", error=exc.details(), **base)
            return 1
        except _StopRequested:
            _write_state(state_dir, status="stopped", **base)
            return 130
        starting = False
        startup = {k: round(v, 2) for k, v in stack.startup_seconds.items()}
        last_health: dict[str, str] = {}

        def write_running_state() -> None:
            nonlocal last_health
            last_health = _write_running_state(state_dir, stack, endpoints, startup, base)

        write_running_state()
        if on_ready is not None:
            on_ready(endpoints, stack.startup_seconds)
        while not stop.wait(POLL_INTERVAL_S):
            control.serve(state_dir, stack, before_answer=write_running_state)
            if stack.health() != last_health:
                write_running_state()
        stack.stop()
        _write_state(state_dir, status="stopped", **base)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stack.stop()


def _write_running_state(
    state_dir: Path,
    stack: LocalStack,
    endpoints: StackEndpoints,
    startup: dict[str, float],
    base: dict[str, Any],
) -> dict[str, str]:
    """The state of a started stack: "ready" when every component runs, else "degraded" (one
    stopped on request, or ended); the pids as they are now. Returns the health it wrote."""
    health = stack.health()
    _write_state(
        state_dir,
        status="ready" if all(v == "running" for v in health.values()) else "degraded",
        components=health,
        endpoints={**endpoints.to_json(), "pids": stack.current_pids()},
        startup_seconds=startup,
        **base,
    )
    return health


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m reach_devstack.supervisor OPTIONS_JSON", file=sys.stderr)
        return 2
    return supervise(options_from_json(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
