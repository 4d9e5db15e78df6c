"""The registry double as a process: ``python -m reach_devstack.registry --port N``.

It listens on loopback only (a test double has no business on other interfaces), binds the
socket itself so that ``--port 0`` works and a taken port fails at once with a clear message,
and stops cleanly (exit 0) on SIGTERM or SIGINT. With ``--state-dir`` its schemas are kept in
``<state-dir>/schemas.json`` and a restart serves the same ids; without, they live in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ["main"]

_log = logging.getLogger("reach_devstack.registry")

EXIT_USAGE = 2
# In-flight requests get this long to finish on SIGTERM.
_GRACEFUL_SHUTDOWN_S = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reach_devstack.registry",
        description="A local double of Confluent Schema Registry's REST API (Avro schemas).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (default)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="keep the schemas here (schemas.json), so a restart keeps their ids; "
        "without it they are in memory only",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    return parser


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _absorb(_signum: int, _frame: FrameType | None) -> None:
    """Installed before uvicorn's handlers; only sees the signal uvicorn re-raises on exit."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not _loopback(args.host):
        print(f"registry: --host {args.host} is not a loopback address", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s registry: %(message)s",
    )
    import uvicorn

    from reach_devstack.registry import STATE_FILE
    from reach_devstack.registry.app import build_app

    state_file = None if args.state_dir is None else args.state_dir.resolve() / STATE_FILE
    try:
        app = build_app(state_file)
    except ValueError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        print(f"registry: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        return 1
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_level=args.log_level,
        log_config=None,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _absorb)
    where = state_file if state_file is not None else "memory only"
    _log.info("schema registry on http://%s:%d (schemas: %s)", args.host, port, where)
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(server.serve(sockets=[sock]))
    sock.close()
    return 0
