"""``/healthz`` and ``/readyz`` on a small HTTP port: is the process alive, is data flowing.

Ready means more than "the process runs": partitions are assigned, Reach, Redis and the source
database answer, and, when there is lag, progress was made recently. ``assess`` decides from a
``Snapshot`` of the service's state alone, so the rule is tested without any server. The server
is the standard library's, on a daemon thread, so it answers while the event loop is busy.

The server's thread only reads progress (observe/progress.py), never calls into a consumer:
confluent-kafka's ``close()`` frees the client before it marks itself closed, so a call from
another thread could touch freed memory. The long story: docs/design.md, "Health and readiness".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from consumer.observe.progress import StageProgress

__all__ = ["HealthServer", "Readiness", "Snapshot", "assess"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What readiness is decided from, taken from the running service."""

    assigned_partitions: int
    reach_ok: bool
    redis_ok: bool
    database_ok: bool
    # Messages on the assigned partitions not yet finished (both stages): the high watermark
    # minus each partition's done offset (PartitionProgress).
    lag: int
    # Among the lagging partitions, the oldest time one last made progress (monotonic); None
    # when none lags.
    last_progress_at: float | None
    started_at: float
    blocked_tenants: tuple[str, ...] = ()
    # Each stage this process runs; a stage whose loop stopped reporting is stalled too.
    stages: tuple[StageProgress, ...] = ()
    # Partitions whose windows a configuration error of every tenant fails ("partition N: why").
    configuration_errors: tuple[str, ...] = ()
    # The service was told to stop and is draining.
    stopping: bool = False

    @classmethod
    def of(
        cls,
        stages: Iterable[StageProgress],
        *,
        started_at: float,
        reach_ok: bool = True,
        redis_ok: bool = True,
        database_ok: bool = True,
        blocked_tenants: tuple[str, ...] = (),
        configuration_errors: tuple[str, ...] = (),
        stopping: bool = False,
    ) -> Snapshot:
        """A snapshot whose partitions, lag and progress are those of ``stages`` together."""
        stages = tuple(stages)
        since = [s.lagging_since for s in stages if s.lagging_since is not None]
        return cls(
            assigned_partitions=sum(s.assigned for s in stages),
            reach_ok=reach_ok,
            redis_ok=redis_ok,
            database_ok=database_ok,
            lag=sum(s.lag for s in stages),
            last_progress_at=min(since, default=None),
            started_at=started_at,
            blocked_tenants=blocked_tenants,
            stages=stages,
            configuration_errors=configuration_errors,
            stopping=stopping,
        )


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...] = ()
    details: dict[str, object] = field(default_factory=dict)


def assess(snapshot: Snapshot, now: float, stall_after_s: float) -> Readiness:
    """Ready unless something is wrong; every reason is listed, not only the first."""
    reasons: list[str] = []
    if snapshot.stopping:
        reasons.append("stopping")
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
    for stage in snapshot.stages:
        if stage.observed_at is not None and now - stage.observed_at > stall_after_s:
            reasons.append(f"the {stage.name} loop has not run for {now - stage.observed_at:.0f} s")
    # Blocked tenants are reported in the details, but do not make the process unready: the
    # other tenants flow, and a restart would not fix a revoked credential.
    return Readiness(not reasons, tuple(reasons), _details(snapshot, now))


def _ago(now: float, then: float | None) -> float | None:
    return None if then is None else round(now - then, 1)


def _details(snapshot: Snapshot, now: float) -> dict[str, object]:
    """The snapshot for a reader: ages in seconds instead of monotonic times."""
    return {
        "assigned_partitions": snapshot.assigned_partitions,
        "lag": snapshot.lag,
        "no_progress_for_s": _ago(now, snapshot.last_progress_at) if snapshot.lag else None,
        "reach_ok": snapshot.reach_ok,
        "redis_ok": snapshot.redis_ok,
        "database_ok": snapshot.database_ok,
        "blocked_tenants": list(snapshot.blocked_tenants),
        "configuration_errors": list(snapshot.configuration_errors),
        "stages": {
            s.name: {
                "assigned_partitions": s.assigned,
                "lag": s.lag,
                "no_progress_for_s": _ago(now, s.lagging_since),
                "last_report_s_ago": _ago(now, s.observed_at),
                "partitions": [
                    {
                        "topic": p.topic,
                        "partition": p.partition,
                        "done": p.done,
                        "lag": p.lag,
                        "no_progress_for_s": _ago(now, p.lagging_since),
                    }
                    for p in s.partitions
                ],
            }
            for s in snapshot.stages
        },
        "uptime_s": _ago(now, snapshot.started_at),
    }


class HealthServer:
    """Serves ``/healthz`` (200 while the process runs) and ``/readyz`` (200 or 503 with the
    reasons, JSON) on ``host:port`` from a daemon thread; and ``/metrics`` from ``metrics``
    (Prometheus' text and its content type, or None while nothing is recorded: a 404)."""

    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Callable[[], Snapshot],
        stall_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        metrics: Callable[[], tuple[bytes, str] | None] = lambda: None,
    ) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                # Prometheus' scrape, when the service records metrics; else a 404.
                scraped = metrics() if self.path.split("?", 1)[0] == "/metrics" else None
                if scraped is not None:
                    self.reply(200, scraped[1], scraped[0])
                    return
                status, body = owner.answer(self.path)
                self.reply(status, "application/json", orjson.dumps(body))

            def reply(self, status: int, content_type: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
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
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which must have begun
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
