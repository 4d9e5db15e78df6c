"""Running the sandbox under uvicorn: one process, one event loop, clean on SIGTERM.

The listening socket is bound here rather than by uvicorn so that ``port=0`` works: the kernel
picks a free port, and the actual port is written to ``port_file`` once the server answers.
That removes the race of "find a free port, then start a server on it" from tests.

SIGTERM and SIGINT stop the server gracefully (uvicorn drains connections, the lifespan closes
the database) and the process then exits 0. Uvicorn re-raises the signal it caught after its
shutdown; the handlers installed here absorb that, so the exit code stays a clean 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from pathlib import Path
from types import FrameType

import uvicorn

from reach_sandbox.app import build_app
from reach_sandbox.config import SandboxConfig

__all__ = ["serve"]

_log = logging.getLogger("reach_sandbox")

# Connections the kernel queues before accept; a benchmark opens a few dozen at once.
_BACKLOG = 1024
# How long in-flight requests get to finish on SIGTERM before their connections are closed; a
# request hung by a timeout fault would otherwise hold the shutdown for its whole hang.
_GRACEFUL_SHUTDOWN_S = 5
# Uvicorn's complaint when a "drop" timeout fault abandons a response on purpose.
_DROP_MESSAGE = "ASGI callable returned without completing response."


class _IntendedDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _DROP_MESSAGE


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)
    sock.setblocking(False)
    return sock


def _absorb(_signum: int, _frame: FrameType | None) -> None:
    """Installed before uvicorn's own handlers; only sees the signal uvicorn re-raises."""


async def _announce(server: uvicorn.Server, port: int, port_file: Path | None) -> None:
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.01)
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{port}\n", encoding="utf-8")
        tmp.replace(port_file)
    _log.info("reach sandbox ready on port %d", port)


def serve(
    config: SandboxConfig,
    state_dir: Path,
    host: str,
    port: int,
    port_file: Path | None = None,
    log_level: str = "info",
) -> int:
    """Serve until SIGTERM or SIGINT; returns the process exit code."""
    state_dir.mkdir(parents=True, exist_ok=True)
    sock = _bind(host, port)
    actual_port = int(sock.getsockname()[1])
    app = build_app(config, state_dir)
    uv_config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        # Uvicorn's records go through the root logger, with the sandbox's timestamps.
        log_config=None,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    logging.getLogger("uvicorn.error").addFilter(_IntendedDrops())
    server = uvicorn.Server(uv_config)

    async def main() -> None:
        announcer = asyncio.create_task(_announce(server, actual_port, port_file))
        try:
            await server.serve(sockets=[sock])
        finally:
            announcer.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _absorb)
    _log.info("reach sandbox starting on http://%s:%d (state in %s)", host, actual_port, state_dir)
    with asyncio.Runner(loop_factory=uv_config.get_loop_factory()) as runner:
        runner.run(main())
    sock.close()
    if port_file is not None:
        port_file.unlink(missing_ok=True)
    return 0 if server.started else 1
