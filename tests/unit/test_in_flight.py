"""The process-wide in-flight bound: pause at either bound, resume only below the low mark."""

from __future__ import annotations

from consumer.config import InFlightBounds
from consumer.syncer.in_flight import InFlight


def _bound() -> InFlight:
    return InFlight(InFlightBounds(max_records=1000, max_bytes=100_000, resume_below=0.5))


def test_below_both_bounds_reads_on() -> None:
    flight = _bound()
    assert not flight.update(999, 99_999)
    assert flight.saturations == 0


def test_either_bound_pauses() -> None:
    assert _bound().update(1000, 0)
    assert _bound().update(0, 100_000)


def test_resumes_only_below_the_low_water_mark_of_both() -> None:
    flight = _bound()
    assert flight.update(1200, 10_000)
    assert flight.update(900, 10_000)  # below the bound, not below the mark
    assert flight.update(499, 60_000)  # records low enough, bytes not
    assert not flight.update(499, 49_999)
    assert not flight.update(900, 10_000)  # above the mark again, still below the bound
    assert flight.saturations == 1
    assert flight.peak_records == 1200
    assert flight.peak_bytes == 60_000
