"""``/healthz`` and ``/readyz`` on a small HTTP port: is the process alive, is data flowing.

Ready means more than "the process runs" (a pod that reported Ready while nothing flowed is the
failure this exists for): partitions are assigned, Reach, Redis and the source database answer,
and, when there is lag, progress was made recently. A stalled consumer with lag is not ready.

The server is the standard library's, on a daemon thread: two GET routes do not need a
framework, and it must keep answering while the event loop is busy. The service hands it a
function that takes a ``Snapshot`` of its state; ``assess`` decides from that alone, so the
rule is tested without any server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

__all__ = ["HealthServer", "Readiness", "Snapshot", "assess"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What readiness is decided from, taken from the running service."""

    assigned_partitions: int
    reach_ok: bool
    redis_ok: bool
    database_ok: bool
    # Messages not yet consumed/committed on the assigned partitions (both stages).
    lag: int
    # Monotonic time of the last committed progress; None before the first.
    last_progress_at: float | None
    started_at: float
    blocked_tenants: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...] = ()
    details: dict[str, object] = field(default_factory=dict)


def assess(snapshot: Snapshot, now: float, stall_after_s: float) -> Readiness:
    """Ready unless something is wrong; every reason is listed, not only the first."""
    reasons: list[str] = []
    if snapshot.assigned_partitions == 0:
        reasons.append("no partitions assigned")
    if not snapshot.reach_ok:
        reasons.append("Reach is failing (circuit open)")
    if not snapshot.redis_ok:
        reasons.append("Redis unreachable")
    if not snapshot.database_ok:
        reasons.append("source database unreachable")
    if snapshot.lag > 0:
        since = snapshot.last_progress_at or snapshot.started_at
        if now - since > stall_after_s:
            reasons.append(f"lag {snapshot.lag} and no progress for {now - since:.0f} s")
    # Blocked tenants are reported in the details, but do not make the process unready: the
    # other tenants flow, and a restart would not fix a revoked credential.
    details = asdict(snapshot)
    details["blocked_tenants"] = list(snapshot.blocked_tenants)
    return Readiness(not reasons, tuple(reasons), details)


class HealthServer:
    """Serves ``/healthz`` (200 while the process runs) and ``/readyz`` (200 or 503 with the
    reasons, JSON) on ``host:port`` from a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Callable[[], Snapshot],
        stall_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = owner.answer(self.path)
                payload = orjson.dumps(body)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                return  # probes every few seconds are not worth a log line each

        self._snapshot = snapshot
        self._stall_after_s = stall_after_s
        self._clock = clock
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, path: str) -> tuple[int, dict[str, object]]:
        route = path.split("?", 1)[0]
        if route == "/healthz":
            return 200, {"status": "alive"}
        if route == "/readyz":
            try:
                readiness = assess(self._snapshot(), self._clock(), self._stall_after_s)
            except Exception as exc:  # a probe must answer, and say why it cannot
                return 503, {"ready": False, "reasons": [f"state unavailable: {exc!r}"]}
            body = {
                "ready": readiness.ready,
                "reasons": list(readiness.reasons),
                **readiness.details,
            }
            return (200 if readiness.ready else 503), body
        return 404, {"error": f"no route {route}"}
