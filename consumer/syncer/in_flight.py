"""The process-wide bound on in-flight work, with a low-water mark.

Each partition already bounds its own backlog window; what this adds is one budget for the
whole process, so that memory stays flat however many partitions it owns and however long
Reach refuses some tenants. The syncer counts what it holds after every poll and asks
``InFlight.update``; the answer says whether every partition must stay paused. Resuming only
below a lower mark keeps a process at its bound from pausing and resuming on every poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consumer.config import InFlightBounds

__all__ = ["InFlight"]


@dataclass
class InFlight:
    bounds: InFlightBounds
    saturated: bool = False
    # How often the bound was reached, and the most held at once (reported by the syncer).
    saturations: int = 0
    peak_records: int = 0
    peak_bytes: int = 0
    records: int = field(default=0, init=False)
    bytes: int = field(default=0, init=False)

    def update(self, records: int, size: int) -> bool:
        """Take the current totals; True while the process must read no more."""
        self.records, self.bytes = records, size
        self.peak_records = max(self.peak_records, records)
        self.peak_bytes = max(self.peak_bytes, size)
        bounds = self.bounds
        if not self.saturated:
            if records >= bounds.max_records or size >= bounds.max_bytes:
                self.saturated = True
                self.saturations += 1
        elif (
            records < bounds.resume_below * bounds.max_records
            and size < bounds.resume_below * bounds.max_bytes
        ):
            self.saturated = False
        return self.saturated
