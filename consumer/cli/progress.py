"""One line of progress for long operations: done of total, rate and ETA, on stderr.

Used by ``reach-sync dlq replay`` and, through its formatting helpers, by other views (the demo's
live view, ``status``). Stderr, so that a command's stdout (its report, ``--json`` lines) stays
clean for scripts. Nothing is shown for an operation shorter than ``DELAY_S``; on a terminal one
line is redrawn in place at most every ``TTY_INTERVAL_S``, elsewhere a plain line comes every
``PLAIN_INTERVAL_S``; once something was shown, ``finish`` writes a final line.

The arithmetic (``rate``, ``eta_s``, ``progress_line``) is pure; the clock and the stream are
injected. Why these choices: docs/design.md, "Reading the topics back".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "eta_s", "format_duration", "format_rate", "progress_line", "rate"]

DELAY_S = 1.0
TTY_INTERVAL_S = 0.25
PLAIN_INTERVAL_S = 5.0


def rate(done: int, elapsed_s: float) -> float | None:
    """Items per second so far; None before any time passed."""
    return done / elapsed_s if elapsed_s > 0 else None


def eta_s(done: int, total: int | None, elapsed_s: float) -> float | None:
    """Seconds left at the mean rate so far; None when it cannot be told (no total, nothing done
    yet). A mean over the whole run, not the last second's: replays and workloads run at a
    steady pace, and the mean does not jump about."""
    if total is None:
        return None
    if done >= total:
        return 0.0
    per_s = rate(done, elapsed_s)
    if not per_s:
        return None
    return (total - done) / per_s


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``: precise enough for an ETA, short; ``<1 s``
    rather than a ``0 s`` that reads as "done"."""
    whole = max(0, round(seconds))
    if whole == 0 and seconds > 0:
        return "<1 s"
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_rate(per_s: float | None, unit: str = "") -> str:
    """``1,234/s``, ``12.5/s``, ``0.40/s`` (more digits for slow rates); ``-/s`` if unknown."""
    suffix = f" {unit}/s" if unit else "/s"
    if per_s is None:
        return f"-{suffix}"
    if per_s >= 100:
        return f"{per_s:,.0f}{suffix}"
    if per_s >= 1:
        return f"{per_s:.1f}{suffix}"
    return f"{per_s:.2f}{suffix}"


def progress_line(
    label: str, done: int, total: int | None, elapsed_s: float, unit: str, final: bool = False
) -> str:
    """``label: 1,200/5,000 entities (24%)  240/s  ETA 16 s``; the final line says how long it
    took instead of an ETA."""
    if total is None:
        count = f"{done:,} {unit}"
    else:
        share = f" ({done * 100 // total}%)" if total else ""
        count = f"{done:,}/{total:,} {unit}{share}"
    per_s = format_rate(rate(done, elapsed_s))
    if final:
        return f"{label}: {count} in {format_duration(elapsed_s)}  {per_s}"
    left = eta_s(done, total, elapsed_s)
    eta = "" if left is None else f"  ETA {format_duration(left)}"
    return f"{label}: {count}  {per_s}{eta}"


class Progress:
    """Reports ``done`` of ``total`` as it moves; call ``update`` as often as convenient (it
    writes only when a line is due) and ``finish`` once at the end."""

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
        delay_s: float = DELAY_S,
    ) -> None:
        self._label = label
        self._total = total
        self._unit = unit
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._tty = self._stream.isatty() if tty is None else tty
        self._interval_s = TTY_INTERVAL_S if self._tty else PLAIN_INTERVAL_S
        self._started = clock()
        # The first line waits for delay_s; later ones for the interval.
        self._next_at = self._started + delay_s
        self._done = 0
        self._shown = False
        self._finished = False

    def update(self, done: int) -> None:
        self._done = done
        now = self._clock()
        if now < self._next_at or self._finished:
            return
        self._next_at = now + self._interval_s
        self._write(progress_line(self._label, done, self._total, now - self._started, self._unit))

    def finish(self, done: int | None = None) -> None:
        """The final line, if anything was shown before; a quick operation stays silent."""
        if self._finished:
            return
        self._finished = True
        if done is not None:
            self._done = done
        if not self._shown:
            return
        elapsed = self._clock() - self._started
        line = progress_line(self._label, self._done, self._total, elapsed, self._unit, final=True)
        self._write(line)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _write(self, line: str) -> None:
        self._shown = True
        if self._tty:
            self._stream.write(f"\r{line}\x1b[K")  # redraw in place; clear what was longer
        else:
            self._stream.write(f"{line}\n")
        self._stream.flush()
