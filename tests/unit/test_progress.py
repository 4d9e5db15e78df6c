"""Progress lines: the rate and ETA arithmetic, and when lines are written (fake clock)."""

from __future__ import annotations

import io

from consumer.cli.progress import Progress, eta_s, format_duration, format_rate, progress_line, rate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_from_done_total_and_elapsed() -> None:
    assert rate(300, 2.0) == 150.0
    assert rate(5, 0.0) is None
    assert eta_s(250, 1000, 5.0) == 15.0  # 50/s, 750 left
    assert eta_s(1000, 1000, 5.0) == 0.0
    assert eta_s(0, 1000, 5.0) is None  # nothing done yet: no pace to tell from
    assert eta_s(10, None, 5.0) is None


def test_durations_and_rates_read_short() -> None:
    assert [format_duration(s) for s in (0, 0.4, 42, 185, 7620)] == [
        "0 s",
        "<1 s",
        "42 s",
        "3 min 05 s",
        "2 h 07 min",
    ]
    assert [format_rate(r) for r in (1234.4, 12.54, 0.4, None)] == [
        "1,234/s",
        "12.5/s",
        "0.40/s",
        "-/s",
    ]
    assert format_rate(3.0, "events") == "3.0 events/s"


def test_the_line_says_done_of_total_rate_and_eta() -> None:
    assert (
        progress_line("replay", 1200, 5000, 5.0, "entities")
        == "replay: 1,200/5,000 entities (24%)  240/s  ETA 16 s"
    )
    assert (
        progress_line("replay", 5000, 5000, 20.0, "entities", final=True)
        == "replay: 5,000/5,000 entities (100%) in 20 s  250/s"
    )
    assert progress_line("scan", 7, None, 2.0, "rows") == "scan: 7 rows  3.5/s"


def test_a_quick_operation_writes_nothing() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress("replay", 10, "entities", stream=out, clock=clock, tty=True)
    clock.now = 0.5
    progress.update(10)
    progress.finish()
    assert out.getvalue() == ""


def test_on_a_terminal_one_line_is_redrawn_a_few_times_a_second_then_ended() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress("replay", 100, "entities", stream=out, clock=clock, tty=True)
    for step in range(1, 21):  # 20 updates over 2 s, every 0.1 s
        clock.now = step * 0.1
        progress.update(step * 5)
    progress.finish()
    redraws = out.getvalue().split("\r")[1:]
    # From 1 s on (after the delay), at most one redraw every 0.25 s, then the final line.
    assert len(redraws) == 5
    assert redraws[0] == "replay: 50/100 entities (50%)  50.0/s  ETA 1 s\x1b[K"
    assert redraws[-1] == "replay: 100/100 entities (100%) in 2 s  50.0/s\x1b[K\n"


def test_elsewhere_a_plain_line_every_five_seconds_and_a_final_one() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress("replay", 1000, "entities", stream=out, clock=clock, tty=False)
    for second in range(1, 13):
        clock.now = float(second)
        progress.update(second * 50)
    progress.finish()
    assert out.getvalue().splitlines() == [
        "replay: 50/1,000 entities (5%)  50.0/s  ETA 19 s",
        "replay: 300/1,000 entities (30%)  50.0/s  ETA 14 s",
        "replay: 550/1,000 entities (55%)  50.0/s  ETA 9 s",
        "replay: 600/1,000 entities (60%) in 12 s  50.0/s",
    ]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_finish_counts_once_and_updates_after_it_are_ignored() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress("replay", 4, "entities", stream=out, clock=clock, tty=False)
    clock.now = 2.0
    progress.update(1)
    progress.finish(4)
    progress.update(3)
    progress.finish()
    assert out.getvalue().splitlines() == [
        "replay: 1/4 entities (25%)  0.50/s  ETA 6 s",
        "replay: 4/4 entities (100%) in 2 s  2.0/s",
    ]
