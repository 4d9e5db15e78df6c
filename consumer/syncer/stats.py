"""What the syncer counts, shared by its loop and its window sink (metrics and status read it)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a router process reads these stats too, and must not load the sink's clients
    from consumer.sink.delivery import DeliveryResult

__all__ = ["LATENCY_SAMPLES", "SyncerStats"]

# Source-commit → accepted latencies kept for percentiles (the demo and the benchmark).
LATENCY_SAMPLES = 20_000


@dataclass
class SyncerStats:
    """What the syncer did; ``latencies_ms`` holds the most recent source-commit → accepted
    times (the source's commit timestamp to the window's completion), bounded."""

    dirty_keys: int = 0
    # Triggers behind those keys (the router merges an entity's triggers within a batch).
    triggers: int = 0
    windows: int = 0
    entities: int = 0
    recomputes: int = 0
    sent: int = 0
    skipped: int = 0
    deleted: int = 0
    dead_lettered: int = 0
    # Audit records the broker acknowledged (accepted, parked and deleted; a retried window's
    # re-sends are audited again).
    audited: int = 0
    # Write-ahead audit records (outcome sending) the broker acknowledged before their request
    # left: one per record or delete about to be sent (a retried window's are written again).
    announced: int = 0
    retries: int = 0
    commits: int = 0
    # Commits the broker refused or never answered; their offsets are committed by a later one.
    commit_failures: int = 0
    # Now, not a count of events: tenants Reach refuses, and the entities held for them.
    blocked_tenants: int = 0
    held: int = 0
    # The process-wide in-flight bound (in_flight.py): how often it paused every partition, and
    # the most dirty keys held at once.
    in_flight_pauses: int = 0
    in_flight_peak: int = 0
    # Now: the dirty keys in flight and their bytes, as last counted (metrics read them).
    in_flight: int = 0
    in_flight_bytes: int = 0
    latencies_ms: deque[int] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    # The same, from the source event's append to its topic: reach-sync's own share.
    own_latencies_ms: deque[int] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    # Per window of changes: its oldest dirty key produced → the window done (the syncer's
    # share: the dirty topic's hop, the window's wait, recompute and delivery).
    window_latencies_ms: deque[int] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def add(self, result: DeliveryResult) -> None:
        self.sent += result.sent
        self.skipped += result.skipped
        self.deleted += result.deleted
        self.dead_lettered += len(result.dead)
