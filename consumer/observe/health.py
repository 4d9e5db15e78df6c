"""``/healthz`` and ``/readyz`` on a small HTTP port: is the process alive, is data flowing.

Ready means more than "the process runs" (a pod that reported Ready while nothing flowed is the
failure this exists for): partitions are assigned, Reach, Redis and the source database answer,
and, when there is lag, progress was made recently. A stalled consumer with lag is not ready.

The server is the standard library's, on a daemon thread: two GET routes do not need a
framework, and it must keep answering while the event loop is busy. The service hands it a
function that takes a ``Snapshot`` of its state; ``assess`` decides from that alone, so the
rule is tested without any server.

Progress is observed per partition by the thread that already uses each consumer (the router's
loop, the syncer's event loop), at most once a second, into a ``ProgressTracker`` that the
server's thread only reads. The server never calls into a consumer itself: confluent-kafka's
``close()`` destroys the client with the GIL released before it marks itself closed, so a call
from another thread during a close could touch freed memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from consumer.observe.metrics import exposition

__all__ = [
    "HealthServer",
    "PartitionProgress",
    "PartitionState",
    "ProgressTracker",
    "Readiness",
    "Snapshot",
    "StageProgress",
    "assess",
    "high_watermark",
]

# How often a stage's loop records its partitions' progress (a few reads of librdkafka's
# cached state each time).
OBSERVE_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """One assigned partition as its stage sees it."""

    topic: str
    partition: int
    # The next offset not finished yet (router: its position, every batch before it committed;
    # syncer: the end of its finished windows). None: not known yet (nothing consumed since the
    # partition was assigned, or just rewound); the last known value is kept then.
    done: int | None
    # The partition's high watermark as of the consumer's last fetch; None before the first.
    high: int | None


@dataclass(frozen=True, slots=True)
class StageProgress:
    """One stage's view for readiness (monotonic times)."""

    name: str
    assigned: int
    lag: int
    # Among the partitions with lag, the oldest time one of them last moved (advanced, or was
    # caught up); None when none lags.
    lagging_since: float | None
    # When the stage's loop last recorded its progress; None before it first did.
    observed_at: float | None
    # Each assigned partition, by topic and partition (for ``reach-sync status``).
    partitions: tuple[PartitionState, ...] = ()


@dataclass(frozen=True, slots=True)
class PartitionState:
    """One assigned partition in a stage's view: its done offset, lag and, when it lags, the
    last time it moved (monotonic)."""

    topic: str
    partition: int
    done: int | None
    lag: int
    lagging_since: float | None


@dataclass(slots=True)
class _Moving:
    done: int | None
    lag: int
    moved_at: float


class ProgressTracker:
    """Per partition of one stage: where it got to and since when it has lagged without moving.

    The stage's loop calls ``due`` and ``observe``; any thread may call ``view``. A partition
    counts as moving whenever its done offset changes or it has no lag, so an idle partition
    that receives one message is not stalled by the quiet before it; a partition that lags and
    does not move for ``stall_after_s`` is a stall (``assess``). A held entity (its tenant
    refused) does not hold the syncer's done offset back (only its commits), so a blocked
    tenant alone is no stall.
    """

    def __init__(self, name: str, interval_s: float = OBSERVE_INTERVAL_S) -> None:
        self._name = name
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._partitions: dict[tuple[str, int], _Moving] = {}
        self._observed_at: float | None = None

    def due(self, now: float) -> bool:
        return self._observed_at is None or now - self._observed_at >= self._interval_s

    def observe(self, partitions: Iterable[PartitionProgress], now: float) -> None:
        """Record the assigned partitions as of ``now``; partitions left out are no longer
        assigned."""
        with self._lock:
            previous, self._partitions = self._partitions, {}
            for p in partitions:
                key = (p.topic, p.partition)
                before = previous.get(key)
                done = p.done if p.done is not None or before is None else before.done
                lag = max(0, p.high - done) if done is not None and p.high is not None else 0
                moved_at = now
                if before is not None and lag > 0 and done == before.done:
                    moved_at = before.moved_at  # lagging, and not moved since
                self._partitions[key] = _Moving(done, lag, moved_at)
            self._observed_at = now

    def view(self) -> StageProgress:
        with self._lock:
            by_key = sorted(self._partitions.items())
            observed_at = self._observed_at
        parts = [p for _, p in by_key]
        lagging = [p.moved_at for p in parts if p.lag > 0]
        return StageProgress(
            self._name,
            assigned=len(parts),
            lag=sum(p.lag for p in parts),
            lagging_since=min(lagging, default=None),
            observed_at=observed_at,
            partitions=tuple(
                PartitionState(t, n, p.done, p.lag, p.moved_at if p.lag > 0 else None)
                for (t, n), p in by_key
            ),
        )


def high_watermark(consumer: Consumer, topic: str, partition: int) -> int | None:
    """The partition's high watermark from the consumer's last fetch (no broker request);
    None before the first fetch. Call it only from a thread that uses ``consumer`` anyway."""
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
    except KafkaException:
        return None
    return int(high) if high >= 0 else None


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
    reasons, JSON) on ``host:port`` from a daemon thread; and ``/metrics`` (Prometheus' text
    format) while the service records metrics (consumer/metrics.py)."""

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
                # Prometheus' scrape, when the service has metrics (metrics.py); else a 404.
                metrics = exposition() if self.path.split("?", 1)[0] == "/metrics" else None
                if metrics is not None:
                    self.reply(200, metrics[1], metrics[0])
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
