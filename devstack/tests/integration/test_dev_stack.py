"""`reach-sync dev up|status|down` through the real command: endpoints work, nothing is orphaned."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from confluent_kafka.admin import AdminClient

STOP_TIMEOUT_S = 30.0
EXAMPLE = Path(__file__).parents[3] / "examples" / "shop.yaml"


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _command() -> str:
    return f"{shlex.quote(sys.executable)} -m consumer.cli.main"


def _in_shell(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a POSIX shell, with no REACH_SYNC_ variable of this process's."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REACH_SYNC_")}
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env=clean, timeout=120, check=False
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent's wait is missing.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_all_gone(pids: list[int], timeout_s: float = STOP_TIMEOUT_S) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [pid for pid in pids if _alive(pid)]
        if not left:
            return []
        time.sleep(0.2)
    return [pid for pid in pids if _alive(pid)]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (servers and what they forked), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _up(state_dir: Path, *extra: str) -> dict[str, Any]:
    result = _cli("dev", "up", "--state-dir", str(state_dir), "--json", *extra)
    assert result.returncode == 0, result.stderr
    endpoints: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return endpoints


def _supervisor_pid(state_dir: Path) -> int:
    return int(json.loads((state_dir / "stack.json").read_text())["supervisor_pid"])


def test_up_status_down_leaves_nothing(state_root: Path) -> None:
    state_dir = state_root / "dev-lifecycle"
    endpoints = _up(state_dir)
    supervisor = _supervisor_pid(state_dir)
    processes = [supervisor, *_descendants(supervisor)]
    assert set(endpoints["pids"]) == {"broker", "redis", "sandbox", "postgres", "debezium"}

    # Every endpoint printed is live.
    AdminClient({"bootstrap.servers": endpoints["bootstrap_servers"]}).list_topics(timeout=10)
    with psycopg.connect(endpoints["postgres_dsn"]) as conn:
        (customers,) = conn.execute("SELECT count(*) FROM customers").fetchone() or (0,)
        assert customers > 0
    assert redis.Redis.from_url(endpoints["redis_url"]).ping()
    assert httpx.get(f"{endpoints['sandbox_url']}/_admin/health").status_code == 200

    status = _cli("dev", "status", "--state-dir", str(state_dir), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "ready"

    # `eval "$(reach-sync dev env)"` points examples/shop.yaml at this stack.
    validated = _in_shell(
        f'eval "$({_command()} dev env --state-dir {shlex.quote(str(state_dir))})" && '
        f"{_command()} validate {shlex.quote(str(EXAMPLE))} && "
        'printf "%s\\n" "$REACH_SYNC_BOOTSTRAP_SERVERS" "$REACH_SYNC_REACH_URL"'
    )
    assert validated.returncode == 0, validated.stderr
    valid, bootstrap, reach_url = validated.stdout.splitlines()
    assert valid.startswith(f"{EXAMPLE}: valid.")
    assert (bootstrap, reach_url) == (endpoints["bootstrap_servers"], endpoints["sandbox_url"])

    down = _cli("dev", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert _wait_all_gone(processes) == []
    assert _cli("dev", "status", "--state-dir", str(state_dir)).returncode == 1
    gone = _cli("dev", "env", "--state-dir", str(state_dir))
    assert (gone.returncode, gone.stdout) == (1, "")
    assert "no ready stack" in gone.stderr


def test_killed_supervisor_takes_its_servers_along(state_root: Path) -> None:
    state_dir = state_root / "dev-kill"
    _up(state_dir, "--no-debezium")
    supervisor = _supervisor_pid(state_dir)
    servers = _descendants(supervisor)
    assert len(servers) >= 4

    os.kill(supervisor, signal.SIGKILL)

    assert _wait_all_gone([supervisor, *servers]) == []


def test_port_in_use_names_the_component_and_the_fix(state_root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli(
            "dev", "up", "--state-dir", str(state_root / "dev-port"), "--redis-port", str(port)
        )
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[0]
    assert message.startswith("dev: redis: port")
    assert "--redis-port" in message


def _status_json(state_dir: Path) -> tuple[int, dict[str, Any]]:
    result = _cli("dev", "status", "--state-dir", str(state_dir), "--json")
    state: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, state


def test_one_component_stopped_started_and_restarted_through_the_cli(state_root: Path) -> None:
    state_dir = state_root / "dev-control"
    endpoints = _up(state_dir, "--no-debezium")
    where = ("--state-dir", str(state_dir))
    try:
        restarted = _cli("dev", "restart", "redis", *where)
        assert restarted.returncode == 0, restarted.stderr
        assert re.fullmatch(r"restarted redis in \d+\.\d s\n", restarted.stdout)
        code, state = _status_json(state_dir)
        assert (code, state["status"], state["components"]["redis"]) == (0, "ready", "running")
        assert state["endpoints"]["pids"]["redis"] != endpoints["pids"]["redis"]
        assert redis.Redis.from_url(endpoints["redis_url"]).ping()  # the same port

        stopped = _cli("dev", "stop", "redis", *where)
        assert (stopped.returncode, stopped.stderr) == (0, ""), stopped.stderr
        assert stopped.stdout.startswith("stopped redis in ")
        code, state = _status_json(state_dir)
        assert (code, state["status"], state["components"]["redis"]) == (1, "degraded", "stopped")
        assert "redis" not in state["endpoints"]["pids"]
        assert "  redis      stopped\n" in _cli("dev", "status", *where).stdout
        # The stack is still there for the tools that read its endpoints.
        assert _cli("dev", "env", *where).returncode == 0

        refused = _cli("dev", "restart", "broker", *where)
        assert refused.returncode == 1
        assert "memory storage" in refused.stderr and "--durable-broker" in refused.stderr

        started = _cli("dev", "start", "redis", *where)
        assert started.returncode == 0, started.stderr
        code, state = _status_json(state_dir)
        assert (code, state["status"], state["components"]["redis"]) == (0, "ready", "running")
        assert not list((state_dir / "control").iterdir())  # every request answered and read
    finally:
        assert _cli("dev", "down", *where).returncode == 0
    gone = _cli("dev", "restart", "redis", *where)
    assert gone.returncode == 1
    assert "no ready stack" in gone.stderr
