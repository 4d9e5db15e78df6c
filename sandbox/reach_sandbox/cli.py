"""Command-line entry: ``python -m reach_sandbox`` and ``reach-sync sandbox``.

A config the sandbox cannot use ends the process before anything starts, with exit code 2 and
one line naming the file, the field and the reason.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from reach_sandbox.config import ConfigError, SandboxConfig, load_sandbox_config
from reach_sandbox.registry import Registry, seed_schemas
from reach_sandbox.validation import SchemaError

__all__ = ["add_arguments", "run", "server_command"]

EXIT_BAD_CONFIG = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="sandbox YAML config file")
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="directory for the SQLite state"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--port-file",
        type=Path,
        default=None,
        help="write the bound port here once the server answers (useful with --port 0)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level of the sandbox and uvicorn",
    )


def server_command(
    config_path: Path,
    state_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    port_file: Path | None = None,
    log_level: str = "info",
) -> list[str]:
    """The argv that runs a sandbox with this interpreter, for launchers (tests, bench, stack)."""
    argv = [
        sys.executable,
        "-m",
        "reach_sandbox",
        "--config",
        str(config_path),
        "--state-dir",
        str(state_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        log_level,
    ]
    return argv if port_file is None else [*argv, "--port-file", str(port_file)]


def check_config(config: SandboxConfig, source: str) -> None:
    """Compile every schema the config seeds, so a bad one fails here and not mid-start-up."""
    try:
        seed_schemas(Registry(config.validation.assert_formats), config, time.time())
    except SchemaError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    try:
        config = load_sandbox_config(args.config)
        check_config(config, str(args.config))
    except ConfigError as exc:
        print(f"sandbox: bad config: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if not 0 <= args.port <= 65535:
        print(f"sandbox: --port {args.port} is not a TCP port", file=sys.stderr)
        return EXIT_BAD_CONFIG
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from reach_sandbox.server import serve

    try:
        return serve(config, args.state_dir, args.host, args.port, args.port_file, args.log_level)
    except OSError as exc:
        print(f"sandbox: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
