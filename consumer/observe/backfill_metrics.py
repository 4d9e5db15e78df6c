"""A backfill's progress as Prometheus metrics, for a backfill run as a job (``--metrics-port``).

A backfill is a command, not the service, so it serves its own ``/metrics`` while it runs, on
loopback unless told otherwise; a scraper (or a Kubernetes Job's sidecar) reads how far it is
without its terminal. Names follow the service's ``reach_sync_`` prefix.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, start_http_server

__all__ = ["BackfillMetrics"]


class BackfillMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._walked = Gauge(
            "reach_sync_backfill_ids_walked",
            "Entity ids the backfill has read so far",
            ["resource"],
            registry=self.registry,
        )
        self._total = Gauge(
            "reach_sync_backfill_ids_total",
            "Entity ids the backfill reads in all",
            ["resource"],
            registry=self.registry,
        )
        self._keys = Gauge(
            "reach_sync_backfill_keys_written",
            "Dirty keys the backfill has written (ids in scope)",
            ["resource"],
            registry=self.registry,
        )
        self._lag = Gauge(
            "reach_sync_backfill_syncer_lag",
            "Dirty keys waiting for the syncer, as the backfill last read it",
            registry=self.registry,
        )
        self._waiting = Gauge(
            "reach_sync_backfill_paused",
            "1 while the backfill waits for the syncer's lag to fall",
            registry=self.registry,
        )
        self._behind = Gauge(
            "reach_sync_backfill_partitions_awaiting_outcomes",
            "Dirty partitions the syncer has not yet committed past the backfill's keys in",
            registry=self.registry,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def walking(self, resource: str, walked: int, total: int | None, keys: int) -> None:
        self._walked.labels(resource).set(walked)
        if total is not None:  # unknown when counting ran over the statement timeout
            self._total.labels(resource).set(total)
        self._keys.labels(resource).set(keys)

    def lag(self, keys: int, waiting: bool) -> None:
        self._lag.set(keys)
        self._waiting.set(1 if waiting else 0)

    def awaiting(self, partitions_behind: int, partitions: int) -> None:
        self._behind.set(partitions_behind)
