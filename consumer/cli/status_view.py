"""``reach-sync status`` on screen: a ``StatusReport`` (consumer/cli/status_report.py) as lines.

Pure functions of the report, kept apart from gathering so that what an operator reads (rates,
the catch-up estimate, which partitions are shown, the notes on approximations) is tested
without a broker or a service. No colour and no cursor movement: the command places the lines
(redrawn on a terminal with ``--watch``, appended elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from consumer.cli.progress import format_duration, format_rate
from consumer.cli.status_report import (
    DeadLetters,
    GroupOffsets,
    PartitionOffsets,
    Sample,
    ScheduledRun,
    ServiceHealth,
    StatusReport,
)
from consumer.schedule.runs import RunRecord, RunSummary

__all__ = ["catch_up", "group_rate", "partition_rate", "render"]

# A group with more partitions than this shows the ones that lag most; the rest are summed up,
# so that the whole report fits one screen.
MAX_PARTITION_ROWS = 12

_UNITS: dict[str, str] = {"router": "events", "syncer": "dirty keys", "scheduled": "dirty keys"}
# The column the scheduled section's labels are padded to.
_LABEL = 10


def partition_rate(
    earlier: PartitionOffsets | None, now: PartitionOffsets, seconds: float | None
) -> float | None:
    """Offsets committed per second on one partition between two samples; None when either
    sample has no commit there."""
    if earlier is None or earlier.committed is None or now.committed is None or not seconds:
        return None
    return max(0, now.committed - earlier.committed) / seconds


def group_rate(earlier: GroupOffsets | None, now: GroupOffsets) -> float | None:
    """Offsets committed per second over the group, from partitions committed in both."""
    if earlier is None or now.at <= earlier.at:
        return None
    before = {(p.topic, p.partition): p.committed for p in earlier.partitions}
    moved = [
        p.committed - c
        for p in now.partitions
        if p.committed is not None and (c := before.get((p.topic, p.partition))) is not None
    ]
    if not moved:
        return None
    return max(0, sum(moved)) / (now.at - earlier.at)


def catch_up(earlier: GroupOffsets | None, now: GroupOffsets) -> str:
    """How the lag moves: ``caught up``, ``catching up, ~40 s left`` at the pace it shrank."""
    if now.lag == 0:
        return "caught up"
    if earlier is None or now.at <= earlier.at:
        return f"lag {now.lag:,}"
    shrink = (earlier.lag - now.lag) / (now.at - earlier.at)
    if shrink <= 0:
        return "not catching up" if earlier.lag < now.lag else "lag steady"
    return f"catching up, ~{format_duration(now.lag / shrink)} left"


def render(report: StatusReport, max_rows: int = MAX_PARTITION_ROWS) -> list[str]:
    """The report as lines of text (no colour, no cursor movement: the caller places them)."""
    when = datetime.fromtimestamp(report.taken_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    earlier = report.earlier
    span = (
        ""
        if earlier is None or not earlier.groups
        else f" · rates over {report.now.groups[0].at - earlier.groups[0].at:.1f} s"
    )
    lines = [f"reach-sync status · {report.name} · {when}{span}"]
    lines += _service_lines(report.services)
    before = {g.stage: g for g in earlier.groups} if earlier is not None else {}
    for group in report.now.groups:
        lines.append("")
        lines += _group_lines(group, before.get(group.stage), report.services, max_rows)
    scheduled_before = {g.group: g for g in earlier.scheduled} if earlier is not None else {}
    pending = {g.group: g for g in report.now.scheduled}
    for run in report.runs:
        lines.append("")
        lines += _scheduled_lines(
            run,
            pending.get(run.group),
            scheduled_before.get(run.group),
            report.taken_at_ms,
            shared=len(report.runs) > 1,
        )
    lines.append("")
    lines.append(_dead_letter_line(report.now.dead_letters, earlier))
    every_group = (*report.now.groups, *report.now.scheduled)
    if any(p.ahead for g in every_group for p in g.partitions):
        lines.append(
            "note: * committed past the high watermark: this broker's watermark trails its last "
            "record batch (the local Tansu), so lag there may be understated"
        )
    return lines


def _service_lines(services: Sequence[ServiceHealth]) -> list[str]:
    lines: list[str] = []
    for n, service in enumerate(services, 1):
        tag = f"service #{n}" if len(services) > 1 else "service"
        if not service.answered:
            where = f"{tag} {service.url}" if service.url else tag
            lines.append(f"{where}: {service.error}; the figures below are Kafka's only")
            continue
        state = "ready" if service.ready else "NOT READY: " + "; ".join(service.reasons)
        uptime = "" if service.uptime_s is None else f" (up {format_duration(service.uptime_s)})"
        lines.append(f"{tag} {service.url}: {state}{uptime}")
        for stage in service.stages:
            stuck = (
                ""
                if stage.no_progress_for_s is None
                else f", no progress for {format_duration(stage.no_progress_for_s)}"
            )
            here = _count(stage.assigned, "partition")
            lines.append(f"  {stage.name:<7} {here} here, lag {stage.lag:,}{stuck}")
        lines.append("  " + _dependencies(service))
        for error in service.configuration_errors:
            lines.append(f"  configuration error: {error}")
    if not services:
        lines.append("service: no health URL; the figures below are Kafka's only")
    return lines


def _dependencies(service: ServiceHealth) -> str:
    def ok(flag: bool | None, good: str, bad: str) -> str:
        return "?" if flag is None else good if flag else bad

    blocked = ", ".join(service.blocked_tenants) or "none"
    return " · ".join(
        (
            "Reach " + ok(service.reach_ok, "circuit closed", "CIRCUIT OPEN"),
            "Redis " + ok(service.redis_ok, "ok", "UNREACHABLE"),
            "database " + ok(service.database_ok, "ok", "UNREACHABLE"),
            f"blocked tenants: {blocked}",
        )
    )


def _group_lines(
    group: GroupOffsets,
    earlier: GroupOffsets | None,
    services: Sequence[ServiceHealth],
    max_rows: int,
) -> list[str]:
    unit = _UNITS[group.stage]
    per_s = format_rate(group_rate(earlier, group), unit)
    trend = catch_up(earlier, group)
    lines = [f"{group.stage}  group {group.group}  lag {group.lag:,}  {per_s}  {trend}"]
    seconds = None if earlier is None or group.at <= earlier.at else group.at - earlier.at
    before = {} if earlier is None else {(p.topic, p.partition): p for p in earlier.partitions}
    shown = list(group.partitions)
    hidden: list[PartitionOffsets] = []
    if len(shown) > max_rows:
        ranked = sorted(shown, key=lambda p: -p.lag)
        shown = sorted(ranked[:max_rows], key=lambda p: (p.topic, p.partition))
        hidden = ranked[max_rows:]
    # What the answering processes say of each partition, when any answered.
    answered = any(service.answered for service in services)
    rows = [("  TOPIC", "PART", "COMMITTED", "END", "LAG", "RATE/s", "SERVICE" if answered else "")]
    for p in shown:
        rate = partition_rate(before.get((p.topic, p.partition)), p, seconds)
        rows.append(
            (
                f"  {p.topic}",
                str(p.partition),
                "-" if p.committed is None else f"{p.committed:,}",
                f"{p.end:,}" + ("*" if p.ahead else ""),
                f"{p.lag:,}",
                format_rate(rate).removesuffix("/s"),
                _seen_by(group.stage, p, services) if answered else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(w) for cell, w in zip(row[1:-1], widths[1:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    if hidden:
        lag = sum(p.lag for p in hidden)
        more = _count(len(hidden), "more partition")
        lines.append(f"  ... and {more}, lag {lag:,} together")
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _seen_by(stage: str, part: PartitionOffsets, services: Sequence[ServiceHealth]) -> str:
    """What the answering process(es) say of this partition: assigned there, its own lag and
    how long it has not moved; ``-`` when none of them has it."""
    for n, service in enumerate(services, 1):
        for s in service.stages:
            if s.name != stage:
                continue
            for h in s.partitions:
                if (h.topic, h.partition) == (part.topic, part.partition):
                    where = f"#{n} " if len(services) > 1 else ""
                    stuck = (
                        ""
                        if h.no_progress_for_s is None
                        else f", stuck {format_duration(h.no_progress_for_s)}"
                    )
                    return f"{where}assigned, lag {h.lag:,}{stuck}"
    return "-"


def _scheduled_lines(
    run: ScheduledRun,
    pending: GroupOffsets | None,
    earlier: GroupOffsets | None,
    taken_at_ms: int,
    *,
    shared: bool,
) -> list[str]:
    """One scheduled resource: its last run (or the one running), its next tick, and the dirty
    keys waiting on the scheduled topic past its group's commits."""
    lines = [f"scheduled  {run.resource}  {run.schedule}  group {run.group}"]
    record = run.record
    if record is None:
        lines.append(_label("last run", f"unknown: {run.error}"))
    elif record.started_ms is None:
        lines.append(_label("last run", "none yet"))
    elif record.running():
        since = format_duration(max(0, taken_at_ms - record.started_ms) / 1000)
        lines.append(
            _label(
                "running",
                f"tick {_clock(record.tick_ms, taken_at_ms)}, started "
                f"{_clock(record.started_ms, taken_at_ms)} ({since} ago)" + _missed(record),
            )
        )
        if record.served_tick_ms is not None:
            served = _clock(record.served_tick_ms, taken_at_ms)
            lines.append(_label("previous", f"tick {served}: {_outcomes(record.last)}"))
    else:
        took = (
            ""
            if record.finished_ms is None
            else f" (took {format_duration((record.finished_ms - record.started_ms) / 1000)})"
        )
        lines.append(
            _label(
                "last run",
                f"tick {_clock(record.tick_ms, taken_at_ms)}, started "
                f"{_clock(record.started_ms, taken_at_ms)}, finished "
                f"{_clock(record.finished_ms, taken_at_ms)}{took}",
            )
        )
        lines.append(_label("", _outcomes(record.last) + _missed(record)))
    until = format_duration(max(0, run.next_tick_ms - taken_at_ms) / 1000)
    lines.append(_label("next tick", f"{_clock(run.next_tick_ms, taken_at_ms)} (in {until})"))
    if run.overdue:
        lines.append(
            _label(
                "overdue",
                f"the tick of {_clock(run.due_tick_ms, taken_at_ms)} has no finished run: a "
                "running process takes it within seconds, a starting one at once",
            )
        )
    lines.append(_pending_line(pending, earlier, shared))
    return lines


def _pending_line(pending: GroupOffsets | None, earlier: GroupOffsets | None, shared: bool) -> str:
    if pending is None:
        return _label("pending", "- (the scheduled topic was not read)")
    topics = sorted({p.topic for p in pending.partitions})
    where = f" on {', '.join(topics)}" if topics else ""
    mark = "*" if any(p.ahead for p in pending.partitions) else ""
    rate = format_rate(group_rate(earlier, pending), "dirty keys")
    text = f"{pending.lag:,}{mark} dirty keys{where}, {rate} committed"
    if shared:
        text += " (every scheduled resource's keys past this group's commits)"
    return _label("pending", text)


def _outcomes(summary: RunSummary) -> str:
    """``1,234 keys, 900 sent, 100 skipped``; the rarer outcomes only when there are some."""
    parts = [f"{summary.keys:,} keys", f"{summary.sent:,} sent", f"{summary.skipped:,} skipped"]
    rarer = (
        ("deleted", summary.deleted),
        ("dead-lettered", summary.dead_lettered),
        ("held for the next run", summary.held),
    )
    parts += [f"{n:,} {what}" for what, n in rarer if n]
    return ", ".join(parts)


def _missed(record: RunRecord) -> str:
    return f"; {_count(record.missed_ticks, 'missed tick')}"


def _label(label: str, text: str) -> str:
    return f"  {label:<{_LABEL}} {text}"


def _clock(ms: int | None, taken_at_ms: int) -> str:
    """``02:13:20Z`` on the report's day (UTC), with the date on any other."""
    if ms is None:
        return "?"
    at = datetime.fromtimestamp(ms / 1000, UTC)
    same_day = at.date() == datetime.fromtimestamp(taken_at_ms / 1000, UTC).date()
    return at.strftime("%H:%M:%SZ" if same_day else "%Y-%m-%d %H:%M:%SZ")


def _dead_letter_line(now: DeadLetters, earlier: Sample | None) -> str:
    new = ""
    if earlier is not None:
        added = now.count - earlier.dead_letters.count
        new = f" (+{added:,} since the earlier sample)" if added > 0 else ""
    return f"dead letters  {now.topic}: {now.count:,}{new}"
