"""The syncer's state per assigned dirty-topic partition (one window in flight at a time)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from consumer.errors import ConfigurationError
from consumer.observe.progress import PartitionProgress
from consumer.syncer.held import HeldEntities
from consumer.syncer.windows import Window

__all__ = ["Partition"]


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
