"""When a scheduled resource's runs are due: the ticks of ``every`` or ``cron``.

``every`` is elapsed time: ticks at whole multiples of the period since the Unix epoch (UTC), so
``1h`` ticks on the hour and ``1d`` at midnight UTC whatever the time zone, and a DST change
never stretches or shortens a period. ``cron`` is wall-clock time in ``timezone``, read by
croniter: across a DST change a time that does not exist runs at the next one that does, and
an hour that happens twice runs twice for ``0 * * * *`` (each is a real hour).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from consumer.config import Delivery, every_seconds

__all__ = ["Schedule"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """A resource's ticks, as epoch milliseconds."""

    every_s: int | None = None
    cron: str | None = None
    timezone: str = "UTC"

    @classmethod
    def of(cls, delivery: Delivery) -> Schedule:
        if not delivery.scheduled:
            raise ValueError("not a scheduled delivery")
        every = None if delivery.every is None else every_seconds(delivery.every)
        return cls(every, delivery.cron, delivery.zone)

    def next_after(self, now_ms: int) -> int:
        """The first tick strictly after ``now_ms``."""
        if self.every_s is not None:
            period = self.every_s * 1000
            return (now_ms // period + 1) * period
        return self._ms(self._cron(now_ms), forward=True)

    def last_at_or_before(self, now_ms: int) -> int:
        """The latest tick at or before ``now_ms``: the one a run now would serve."""
        if self.every_s is not None:
            period = self.every_s * 1000
            return now_ms // period * period
        # croniter's get_prev is strictly before its start: start a millisecond after now.
        return self._ms(self._cron(now_ms + 1), forward=False)

    def describe(self) -> str:
        if self.every_s is not None:
            return f"every {self.every_s} s"
        return f"cron {self.cron!r} ({self.timezone})"

    def _cron(self, at_ms: int) -> croniter:
        if self.cron is None:
            raise ValueError("not a cron schedule")
        start = datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(ZoneInfo(self.timezone))
        return croniter(self.cron, start)

    @staticmethod
    def _ms(it: croniter, *, forward: bool) -> int:
        tick = it.get_next(datetime) if forward else it.get_prev(datetime)
        return int(tick.timestamp() * 1000)
