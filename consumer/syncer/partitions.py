"""The syncer's state per assigned dirty-topic partition (one window in flight at a time)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from consumer.errors import ConfigurationError
from consumer.observe.progress import PartitionProgress
from consumer.syncer.held import HELD_BOUND, HeldEntities
from consumer.syncer.windows import Window

__all__ = ["BACKLOG_FACTOR", "Partition"]

# A partition whose open window holds this many times its resources' max_keys while another
# window is in flight is paused: memory stays bounded under any backlog.
BACKLOG_FACTOR = 4


@dataclass
class Partition:
    """One assigned dirty-topic partition: its open, running and failed windows, its held
    entities, where its finished windows end, and its pause and retry state."""

    topic: str
    partition: int
    open: Window | None = None
    running: asyncio.Task[None] | None = None
    # The window ``running`` processes (for the in-flight count; stale once it has finished).
    running_window: Window | None = None
    failed: Window | None = None
    retry_at: float = 0.0
    attempts: int = 0
    paused: bool = False
    revoked: bool = False
    # The next offset of this partition whose windows are all done; a commit commits it unless
    # an entity held (below) was carried by an earlier offset.
    done_offset: int | None = None
    held: HeldEntities = field(default_factory=HeldEntities)
    # The configuration error failing this partition's window, for readiness.
    stalled: ConfigurationError | None = None
    # The first offset read since the partition was assigned: where its windows began, for
    # readiness's lag until the first of them finished (done_offset).
    first_offset: int | None = None

    def commit_offset(self) -> int | None:
        return self.held.commit_offset(self.done_offset)

    def read(self, offset: int) -> None:
        """A message at ``offset`` was read: the first since the assignment is where its
        windows began."""
        if self.first_offset is None:
            self.first_offset = offset

    def progress(self, high: int | None) -> PartitionProgress:
        """For readiness: where its finished windows end (held entities do not hold it back),
        or where its windows began while none has finished, against the high watermark."""
        done = self.done_offset if self.done_offset is not None else self.first_offset
        return PartitionProgress(self.topic, self.partition, done, high)

    def in_flight(self) -> tuple[int, int]:
        """Its dirty keys read and not done yet, and the memory its windows' keys take (held
        entities are counted, not sized)."""
        running = self.running_window if self.running is not None else None
        windows = [w for w in (self.open, running, self.failed) if w is not None]
        return sum(map(len, windows)) + len(self.held), sum(w.size for w in windows)

    def should_pause(self, max_keys: int) -> bool:
        """Its backlog window is full (``BACKLOG_FACTOR`` times ``max_keys``, the open window's
        resources') while another is in flight, or it holds too much for a refused tenant."""
        backlog = len(self.open) if self.open is not None else 0
        full = self.open is not None and backlog >= BACKLOG_FACTOR * max_keys
        busy = self.running is not None or self.failed is not None
        return (full and busy) or len(self.held) >= HELD_BOUND
