"""``reach-sync dev up|status|env|down|stop|start|restart|seed|load``: the local stack from the
command line. ``stop``, ``start`` and ``restart`` act on one component of a running stack, through
its supervisor (``control.py``)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reach_devstack import control
from reach_devstack.process import ComponentError, log_tail
from reach_devstack.stack import FORMATS, StackEndpoints, StackOptions, stack_env
from reach_devstack.supervisor import STATE_FILE, options_to_json, read_state, supervise

__all__ = ["add_demo_command", "add_dev_commands", "env_lines", "reporting"]

DEFAULT_STATE_DIR = Path(".state/dev")
# `dev up` waits this long for the detached supervisor to report ready or failed.
UP_TIMEOUT_S = 300.0
# `dev down` waits this long for a clean stop before it kills the supervisor (its servers then
# die with it through the parent-death signal).
DOWN_TIMEOUT_S = 60.0
# `dev stop|start|restart` waits this long for the supervisor's answer: Debezium's readiness
# alone may take up to 180 s (stack.DEBEZIUM_READY_TIMEOUT_S), after a stop of up to 15 s.
CONTROL_TIMEOUT_S = 240.0
# The stack is up and its endpoints hold: "degraded" is a stack with a component stopped on
# request (or ended), whose ports, credentials and other servers are the same; `dev env`, `seed`
# and `load` keep working on it (a tool then meets the stopped server as it would in production).
RUNNING = ("ready", "degraded")
COMPONENT_HELP = (
    "broker, postgres, redis, sandbox, debezium (s3 with --durable-broker, "
    "registry with --format avro)"
)


Handler = Callable[[argparse.Namespace], int]


def reporting(handler: Handler) -> Handler:
    """A command of the local stack: a component that fails is named with its fix and log."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ComponentError as exc:
            print(exc.details(), file=sys.stderr)
            return 1

    return run


def add_demo_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from reach_devstack.demo import add_arguments, run

    parser = sub.add_parser("demo", help="the whole thing on the local stack, with a live view")
    add_arguments(parser)
    parser.set_defaults(handler=reporting(run))


def add_dev_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = sub.add_parser("dev", help="the local stack: broker, Postgres, Redis, Debezium, sandbox")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)

    up = dev_sub.add_parser("up", help="start the local stack (fresh each time)")
    _add_state_dir(up)
    up.add_argument("--json", action="store_true", help="print the endpoints as JSON")
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops all")
    up.add_argument("--no-debezium", action="store_true", help="skip change capture")
    up.add_argument("--no-schemas", action="store_true", help="Debezium JSON without schemas")
    up.add_argument(
        "--format",
        choices=FORMATS,
        default="json",
        help="what Debezium writes: Kafka Connect's JSON (default), or Avro in the Confluent "
        "wire format with its schemas in a local schema registry (the `registry` component)",
    )
    up.add_argument(
        "--durable-broker",
        action="store_true",
        help="keep the broker's topics and offsets in a local S3 server (SeaweedFS, the `s3` "
        "component, its data on disk), so that `dev restart broker` keeps them",
    )
    for name in ("broker", "postgres", "redis", "sandbox", "registry"):
        up.add_argument(f"--{name}-port", type=int, default=0, help="0 picks a free port")
    up.set_defaults(handler=reporting(_up))

    status = dev_sub.add_parser("status", help="show the local stack and its endpoints")
    _add_state_dir(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=reporting(_status))

    env = dev_sub.add_parser(
        "env",
        help="print the export lines that point a definition (examples/shop.yaml) at the stack",
        description="Print `export REACH_SYNC_...=...` lines for the running local stack: "
        "its servers, the sandbox as Reach with the stack's own credentials (fresh for each "
        "stack, local only), and the local broker's settings. "
        'Use: eval "$(reach-sync dev env)"',
        epilog="exit codes: 0 printed; 1 no running stack in the state directory",
    )
    _add_state_dir(env)
    env.set_defaults(handler=reporting(_env))

    down = dev_sub.add_parser("down", help="stop the local stack")
    _add_state_dir(down)
    down.set_defaults(handler=reporting(_down))

    for action, help_text in (
        ("stop", "stop one component of the running stack; it stays stopped"),
        ("start", "start a stopped component again (same port, data and credentials)"),
        ("restart", "stop and start one component of the running stack"),
    ):
        command = dev_sub.add_parser(
            action,
            help=help_text,
            epilog="Postgres keeps its data, the sandbox its state, Debezium its offsets, the "
            "registry its schemas, s3 the durable broker's data; Redis comes back empty (no "
            "persistence, by design); the broker only with --durable-broker. "
            "exit codes: 0 done; 1 refused, failed, or no running stack",
        )
        _add_state_dir(command)
        command.add_argument("component", help=COMPONENT_HELP)
        command.set_defaults(handler=reporting(_control))

    seed = dev_sub.add_parser("seed", help="(re)create and seed the sample shop database")
    _add_state_dir(seed)
    seed.add_argument("--customers", type=int, default=200)
    seed.add_argument("--transactions", type=int, default=600)
    seed.set_defaults(handler=reporting(_seed))

    load = dev_sub.add_parser("load", help="run the shop workload generator")
    _add_state_dir(load)
    load.add_argument("--rate", type=float, default=50.0, help="changes per second")
    load.add_argument("--seconds", type=float, default=30.0)
    load.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")
    load.set_defaults(handler=reporting(_load))


def _add_state_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE_DIR, help=f"default {DEFAULT_STATE_DIR}"
    )


def _supervisor_alive(state: dict[str, Any]) -> bool:
    pid = state.get("supervisor_pid")
    if not isinstance(pid, int):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # Guards against a recycled pid: it must still be our supervisor (detached or foreground).
    return b"reach_devstack.supervisor" in cmdline or b"reach-sync" in cmdline


def _prepare_state_dir(state_dir: Path) -> None:
    """Start clean: the broker keeps topics in memory, so an old stack cannot be resumed.

    Only a directory that is empty or holds a previous stack is wiped, never anything else.
    """
    if not state_dir.exists():
        state_dir.mkdir(parents=True)
        return
    if any(state_dir.iterdir()) and not (state_dir / STATE_FILE).exists():
        raise SystemExit(
            f"dev: {state_dir} exists and is not a reach-sync stack directory; "
            "choose another --state-dir"
        )
    shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)


def _options(args: argparse.Namespace) -> StackOptions:
    if args.format == "avro" and args.no_schemas:
        raise SystemExit("dev: --no-schemas is for --format json; Avro always has its schema")
    return StackOptions(
        state_dir=args.state_dir.resolve(),
        broker_port=args.broker_port,
        postgres_port=args.postgres_port,
        redis_port=args.redis_port,
        sandbox_port=args.sandbox_port,
        with_debezium=not args.no_debezium,
        debezium_schemas=not args.no_schemas,
        durable_broker=args.durable_broker,
        format=args.format,
        registry_port=args.registry_port,
    )


def _up(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.resolve()
    state = read_state(state_dir)
    if state and _supervisor_alive(state):
        print(
            f"dev: a stack is already running in {state_dir} (pid {state['supervisor_pid']}); "
            "`reach-sync dev down` first",
            file=sys.stderr,
        )
        return 1
    options = _options(args)  # refuses bad combinations before anything is wiped
    _prepare_state_dir(state_dir)
    if args.foreground:
        return supervise(
            options, on_ready=lambda ep, secs: _print_endpoints(ep.to_json(), secs, args.json)
        )
    log_path = state_dir / "logs" / "supervisor.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reach_devstack.supervisor", options_to_json(options)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        return _await_start(state_dir, proc, args.json)
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=DOWN_TIMEOUT_S)
        return 130


def _await_start(state_dir: Path, proc: subprocess.Popen[bytes], as_json: bool) -> int:
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        state = read_state(state_dir) or {}
        status = state.get("status")
        if status == "ready":
            _print_endpoints(state["endpoints"], state.get("startup_seconds", {}), as_json)
            return 0
        if status == "failed":
            print(f"dev: {state.get('error', 'start failed')}", file=sys.stderr)
            return 1
        if proc.poll() is not None:
            tail = log_tail(state_dir / "logs" / "supervisor.log")
            print(
                f"dev: the supervisor exited with code {proc.returncode}\n{tail}", file=sys.stderr
            )
            return 1
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    print(f"dev: the stack was not ready after {UP_TIMEOUT_S:.0f} s; stopped it", file=sys.stderr)
    return 1


def _print_endpoints(endpoints: dict[str, Any], seconds: dict[str, float], as_json: bool) -> None:
    if as_json:
        print(json.dumps(endpoints), flush=True)
        return
    ep = StackEndpoints(**endpoints)
    db_user, db_where = (
        ep.postgres_dsn.split("//", 1)[1].split(":", 1)[0],
        ep.postgres_dsn.split("@")[-1],
    )
    tables = ", ".join(ep.debezium_tables) or "off"
    storage = "durable" if ep.broker_storage.startswith("s3:") else "memory"
    registry = [f"  registry   {ep.schema_registry_url}"] if ep.schema_registry_url else []
    lines = [
        f"local stack ready in {seconds.get('total', 0):.1f} s  (state: {ep.state_dir})",
        f"  broker     {ep.bootstrap_servers}  ({storage} storage)",
        f"  postgres   {db_where}  (user {db_user})",
        f"  redis      {ep.redis_url}",
        f"  sandbox    {ep.sandbox_url}  (partner {ep.reach_partner_id})",
        *registry,
        f"  debezium   {tables} -> topics {ep.topic_prefix}.<schema>.<table>  ({ep.source_format})",
        f"  logs       {ep.logs_dir}",
        "credentials: `reach-sync dev status --json`; stop with `reach-sync dev down`",
    ]
    print("\n".join(lines), flush=True)


def _status(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.resolve()
    state = read_state(state_dir)
    if state is None:
        print(f"dev: no stack in {state_dir}", file=sys.stderr)
        return 1
    alive = _supervisor_alive(state)
    status = state.get("status") if alive else "not running"
    if args.json:
        print(json.dumps({**state, "status": status}))
        return 0 if alive and status == "ready" else 1
    print(f"stack in {state_dir}: {status}")
    pids = (state.get("endpoints") or {}).get("pids") or {}
    for name, health in (state.get("components") or {}).items():
        pid = f"  (pid {pids[name]})" if alive and name in pids else ""
        print(f"  {name:<10} {health if alive else 'not running'}{pid}")
    endpoints = state.get("endpoints") or {}
    if endpoints.get("schema_registry_url"):
        print(
            f"format: {endpoints.get('source_format')}; schema registry at "
            f"{endpoints['schema_registry_url']}"
        )
    if state.get("error"):
        print(state["error"])
    return 0 if alive and status == "ready" else 1


def _down(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.resolve()
    state = read_state(state_dir)
    if state is None or not _supervisor_alive(state):
        print(f"dev: no running stack in {state_dir}")
        return 0
    pid = int(state["supervisor_pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while time.monotonic() < deadline and _supervisor_alive(state):
        time.sleep(0.2)
    if _supervisor_alive(state):
        os.kill(pid, signal.SIGKILL)
        print(f"dev: the stack did not stop within {DOWN_TIMEOUT_S:.0f} s; killed it")
    print(f"stopped the stack in {state_dir}")
    return 0


def _ready_endpoints(state_dir: Path) -> StackEndpoints | None:
    """The endpoints of the stack running in ``state_dir``; None if none is, or it is not
    ready yet (starting, failed, or its supervisor is gone). A degraded stack counts (RUNNING):
    a component stopped on request comes back on the same port with the same credentials."""
    state = read_state(state_dir.resolve())
    if not state or state.get("status") not in RUNNING or not _supervisor_alive(state):
        return None
    return StackEndpoints(**state["endpoints"])


def _no_stack(state_dir: Path) -> str:
    where = "" if state_dir == DEFAULT_STATE_DIR else f" --state-dir {shlex.quote(str(state_dir))}"
    return (
        f"dev: no ready stack in {state_dir.resolve()}; start one with `reach-sync dev up{where}`"
    )


def _running_endpoints(state_dir: Path) -> StackEndpoints:
    endpoints = _ready_endpoints(state_dir)
    if endpoints is None:
        raise SystemExit(_no_stack(state_dir))
    return endpoints


def _control(args: argparse.Namespace) -> int:
    """Ask the stack's supervisor (which owns the servers) to act, and wait for its answer."""
    state_dir: Path = args.state_dir.resolve()
    state = read_state(state_dir)
    if not state or state.get("status") not in RUNNING or not _supervisor_alive(state):
        print(_no_stack(args.state_dir), file=sys.stderr)
        return 1
    action: str = args.dev_command
    request_id = control.write_request(state_dir, action, args.component)
    try:
        result = control.wait_result(
            state_dir, request_id, CONTROL_TIMEOUT_S, lambda: _supervisor_alive(state)
        )
    except KeyboardInterrupt:
        print("dev: interrupted; the supervisor carries on with the request", file=sys.stderr)
        return 130
    if not result.get("ok"):
        print(f"dev: {result.get('error', 'failed')}", file=sys.stderr)
        return 1
    print(f"{control.PAST_TENSE[action]} {args.component} in {result.get('seconds', 0):.1f} s")
    return 0


def env_lines(endpoints: StackEndpoints) -> list[str]:
    """``export NAME=value`` for each variable of ``stack_env``, each value quoted for a POSIX
    shell, so that ``eval "$(reach-sync dev env)"`` sets exactly these values."""
    return [f"export {name}={shlex.quote(value)}" for name, value in stack_env(endpoints).items()]


def _env(args: argparse.Namespace) -> int:
    endpoints = _ready_endpoints(args.state_dir)
    if endpoints is None:
        # Nothing on stdout: `eval "$(reach-sync dev env)"` then sets nothing.
        print(_no_stack(args.state_dir), file=sys.stderr)
        return 1
    print("\n".join(env_lines(endpoints)))
    return 0


def _seed(args: argparse.Namespace) -> int:
    from reach_devstack.shop import seed

    endpoints = _running_endpoints(args.state_dir)
    result = seed(
        endpoints.postgres_dsn,
        customers=args.customers,
        transactions=args.transactions,
        existing="replace",
    )
    print(f"seeded {result.customers} customers and {result.transactions} transactions")
    return 0


def _load(args: argparse.Namespace) -> int:
    from reach_devstack.load import run_load

    endpoints = _running_endpoints(args.state_dir)
    stats = run_load(
        endpoints.postgres_dsn, rate=args.rate, seconds=args.seconds, rng_seed=args.seed
    )
    print(stats)
    return 0
