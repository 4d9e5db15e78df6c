"""`reach-sync status` without servers: the figures' arithmetic, reading /readyz, rendering."""

from __future__ import annotations

from consumer.cli.status_report import (
    DeadLetters,
    GroupOffsets,
    PartitionOffsets,
    Sample,
    ScheduledRun,
    ServiceHealth,
    StatusReport,
    health_urls,
    parse_readyz,
    readyz_url,
)
from consumer.cli.status_view import catch_up, group_rate, partition_rate, render
from consumer.config import HealthSettings, SyncDefinition
from consumer.schedule.runs import RunRecord, RunSummary
from tests.shop_definition import shop_definition

T0 = 100.0
TAKEN_AT_MS = 1_795_400_000_000  # 2026-11-23 02:13:20Z


def _part(partition: int, committed: int | None, high: int, low: int = 0) -> PartitionOffsets:
    return PartitionOffsets("shop.dirty", partition, low, high, committed)


def _group(at: float, *parts: PartitionOffsets, stage: str = "syncer") -> GroupOffsets:
    return GroupOffsets(stage, f"g.{stage}", parts, at)  # type: ignore[arg-type]


def test_lag_is_the_watermark_minus_the_committed_offset() -> None:
    assert (_part(0, 7, 10).lag, _part(0, 7, 10).end, _part(0, 7, 10).ahead) == (3, 10, False)
    # Never committed: everything the partition still holds (from the low watermark).
    assert _part(0, None, 10, low=4).lag == 6
    # Committed before what retention kept: the rest of the partition, not more.
    assert _part(0, 1, 10, low=4).lag == 6
    # Past the watermark (the local broker's trails its last batch): no lag, end is the commit.
    past = _part(0, 12, 10)
    assert (past.lag, past.end, past.ahead) == (0, 12, True)


def test_rates_are_committed_offsets_per_second_between_two_samples() -> None:
    earlier = _group(T0, _part(0, 10, 50), _part(1, None, 5), _part(2, 3, 3))
    now = _group(T0 + 2, _part(0, 30, 60), _part(1, 4, 5), _part(2, 3, 3))
    # Partition 1 had no commit in the earlier sample: it does not count.
    assert group_rate(earlier, now) == 10.0
    assert partition_rate(earlier.partitions[0], now.partitions[0], 2.0) == 10.0
    assert partition_rate(earlier.partitions[1], now.partitions[1], 2.0) is None
    assert group_rate(None, now) is None
    assert group_rate(now, now) is None  # no time between them
    # Offsets never go back for a rate (a reset group is not a negative rate).
    assert group_rate(now, _group(T0 + 3, _part(0, 20, 60))) == 0.0


def test_catch_up_tells_how_the_lag_moves() -> None:
    shrinking = _group(T0, _part(0, 0, 100)), _group(T0 + 2, _part(0, 40, 110))
    assert catch_up(*shrinking) == "catching up, ~5 s left"  # 100 → 70: 15/s, 70 left
    assert catch_up(None, _group(T0, _part(0, 5, 5))) == "caught up"
    assert catch_up(None, _group(T0, _part(0, 0, 5))) == "lag 5"
    growing = _group(T0, _part(0, 0, 10)), _group(T0 + 1, _part(0, 0, 20))
    assert catch_up(*growing) == "not catching up"
    steady = _group(T0, _part(0, 0, 10)), _group(T0 + 1, _part(0, 5, 15))
    assert catch_up(*steady) == "lag steady"


def test_readyz_is_read_and_what_an_older_service_lacks_is_left_out() -> None:
    body = {
        "ready": False,
        "reasons": ["Redis unreachable"],
        "lag": 3,
        "reach_ok": True,
        "redis_ok": False,
        "database_ok": True,
        "blocked_tenants": ["m-2"],
        "configuration_errors": [],
        "stages": {
            "syncer": {
                "assigned_partitions": 2,
                "lag": 3,
                "no_progress_for_s": 12.0,
                "last_report_s_ago": 0.4,
                "partitions": [
                    {"topic": "d", "partition": 4, "done": 7, "lag": 3, "no_progress_for_s": 12.0}
                ],
            },
            "router": {"assigned_partitions": 1, "lag": 0, "no_progress_for_s": None},
        },
        "uptime_s": 60.0,
    }
    health = parse_readyz("http://h/readyz", body)
    assert (health.ready, health.reasons, health.redis_ok) == (False, ("Redis unreachable",), False)
    assert health.blocked_tenants == ("m-2",)
    syncer, router = health.stages
    assert (syncer.name, syncer.assigned, syncer.lag, syncer.no_progress_for_s) == (
        "syncer",
        2,
        3,
        12.0,
    )
    assert syncer.partitions[0].partition == 4 and syncer.partitions[0].done == 7
    assert router.partitions == ()
    assert parse_readyz("u", {"ready": True}).stages == ()


def test_the_health_url_comes_from_the_definition() -> None:
    definition = shop_definition()
    assert "no health section" in str(health_urls(definition))

    def serving(**health: object) -> SyncDefinition:
        return definition.model_copy(update={"health": HealthSettings(**health)})  # type: ignore[arg-type]

    assert health_urls(serving(port=8081)) == ["http://127.0.0.1:8081/readyz"]
    assert health_urls(serving(port=8081, host="0.0.0.0")) == ["http://127.0.0.1:8081/readyz"]
    assert health_urls(serving(port=8081, host="::")) == ["http://[::1]:8081/readyz"]
    assert health_urls(serving(port=8081, host="pod-3")) == ["http://pod-3:8081/readyz"]
    free = serving(port=0)
    assert "health.port is 0" in str(health_urls(free))
    assert readyz_url("127.0.0.1:8081") == "http://127.0.0.1:8081/readyz"
    assert readyz_url("http://pod-3:8081/") == "http://pod-3:8081/readyz"
    assert readyz_url("http://pod-3:8081/readyz") == "http://pod-3:8081/readyz"


def _report(services: tuple[ServiceHealth, ...], earlier_dead: int = 2) -> StatusReport:
    router_then = _group(T0, PartitionOffsets("shop.c", 0, 0, 100, 40), stage="router")
    router_now = _group(T0 + 2, PartitionOffsets("shop.c", 0, 0, 100, 60), stage="router")
    syncer_then = _group(T0, _part(0, 5, 5), _part(1, None, 0))
    syncer_now = _group(T0 + 2, _part(0, 9, 8), _part(1, None, 0))
    return StatusReport(
        name="shop.yaml",
        taken_at_ms=TAKEN_AT_MS,
        now=Sample((router_now, syncer_now), DeadLetters("shop.dlq", 5)),
        earlier=Sample((router_then, syncer_then), DeadLetters("shop.dlq", earlier_dead)),
        services=services,
    )


def test_render_without_an_answering_service_shows_kafkas_figures() -> None:
    lines = render(_report((ServiceHealth("http://h:1/readyz", error="no answer (refused)"),)))
    assert lines == [
        "reach-sync status · shop.yaml · 2026-11-23 02:13:20Z · rates over 2.0 s",
        "service http://h:1/readyz: no answer (refused); the figures below are Kafka's only",
        "",
        "router  group g.router  lag 40  10.0 events/s  catching up, ~4 s left",
        "  TOPIC   PART  COMMITTED  END  LAG  RATE/s",
        "  shop.c     0         60  100   40    10.0",
        "",
        "syncer  group g.syncer  lag 0  2.0 dirty keys/s  caught up",
        "  TOPIC       PART  COMMITTED  END  LAG  RATE/s",
        "  shop.dirty     0          9   9*    0     2.0",
        "  shop.dirty     1          -    0    0       -",
        "",
        "dead letters  shop.dlq: 5 (+3 since the earlier sample)",
        "note: * committed past the high watermark: this broker's watermark trails its last "
        "record batch (the local Tansu), so lag there may be understated",
    ]


def test_render_shows_what_the_service_says_per_stage_and_partition() -> None:
    body = {
        "ready": False,
        "reasons": ["lag 40 and no progress for 90 s", "Reach is failing (circuit open)"],
        "reach_ok": False,
        "redis_ok": True,
        "database_ok": True,
        "blocked_tenants": ["m-2", "m-3"],
        "configuration_errors": ["partition 3: unknown schema"],
        "stages": {
            "router": {
                "assigned_partitions": 1,
                "lag": 40,
                "no_progress_for_s": 90.0,
                "partitions": [
                    {
                        "topic": "shop.c",
                        "partition": 0,
                        "done": 60,
                        "lag": 40,
                        "no_progress_for_s": 90.0,
                    }
                ],
            }
        },
        "uptime_s": 3700.0,
    }
    lines = render(_report((parse_readyz("http://h:1/readyz", body),)))
    assert lines[1:5] == [
        "service http://h:1/readyz: NOT READY: lag 40 and no progress for 90 s; Reach is failing "
        "(circuit open) (up 1 h 01 min)",
        "  router  1 partition here, lag 40, no progress for 1 min 30 s",
        "  Reach CIRCUIT OPEN · Redis ok · database ok · blocked tenants: m-2, m-3",
        "  configuration error: partition 3: unknown schema",
    ]
    assert lines[7] == "  TOPIC   PART  COMMITTED  END  LAG  RATE/s  SERVICE"
    assert (
        lines[8]
        == "  shop.c     0         60  100   40    10.0  assigned, lag 40, stuck 1 min 30 s"
    )
    assert lines[12].endswith("  -")  # a dirty partition no answering process has


def test_render_marks_processes_when_several_answer() -> None:
    first = parse_readyz("http://a/readyz", {"ready": True, "stages": {}})
    second = parse_readyz(
        "http://b/readyz",
        {
            "ready": True,
            "stages": {
                "syncer": {
                    "assigned_partitions": 1,
                    "lag": 0,
                    "partitions": [{"topic": "shop.dirty", "partition": 1, "done": 0, "lag": 0}],
                }
            },
        },
    )
    lines = render(_report((first, second), earlier_dead=5))
    assert lines[1] == "service #1 http://a/readyz: ready"
    assert "service #2 http://b/readyz: ready" in lines
    assert any(line.endswith("#2 assigned, lag 0") for line in lines)
    assert "dead letters  shop.dlq: 5" in lines  # nothing new since the earlier sample


def test_a_group_with_many_partitions_shows_those_that_lag_most() -> None:
    parts = [_part(n, 0, n) for n in range(20)]  # partition n lags n
    report = StatusReport(
        "x", TAKEN_AT_MS, Sample((_group(T0, *parts),), DeadLetters("d", 0)), None
    )
    lines = render(report, max_rows=3)
    assert lines[0] == "reach-sync status · x · 2026-11-23 02:13:20Z"
    assert [line.split()[1] for line in lines[5:8]] == ["17", "18", "19"]
    assert lines[8] == f"  ... and 17 more partitions, lag {sum(range(17))} together"


# --- scheduled resources -------------------------------------------------------------------------

TICK_MS = TAKEN_AT_MS - 20_000  # 02:13:00Z, the latest tick of "every 60 s" before the report
NEXT_MS = TAKEN_AT_MS + 40_000  # 02:14:00Z


def _pending(at: float, *committed_high: tuple[int | None, int]) -> GroupOffsets:
    parts = tuple(
        PartitionOffsets("shop.scheduled", n, 0, high, committed)
        for n, (committed, high) in enumerate(committed_high)
    )
    return GroupOffsets("scheduled", "g.scheduled.customers", parts, at)


def _run(record: RunRecord | None, error: str | None = None) -> ScheduledRun:
    return ScheduledRun(
        "customers", "every 60 s", "g.scheduled.customers", TICK_MS, NEXT_MS, record, error
    )


def _scheduled_report(
    run: ScheduledRun, now: GroupOffsets, earlier: GroupOffsets | None = None
) -> list[str]:
    """The scheduled section of a report, from its title to the line before dead letters."""
    syncer = _group(T0 + 2, _part(0, 5, 5))
    report = StatusReport(
        "shop.yaml",
        TAKEN_AT_MS,
        Sample((syncer,), DeadLetters("shop.dlq", 0), (now,)),
        None if earlier is None else Sample((syncer,), DeadLetters("shop.dlq", 0), (earlier,)),
        runs=(run,),
    )
    lines = render(report)
    start = lines.index("scheduled  customers  every 60 s  group g.scheduled.customers")
    return lines[start : lines.index("", start)]


def test_a_finished_run_is_shown_with_its_counts_the_next_tick_and_what_waits() -> None:
    finished = RunRecord(
        tick_ms=TICK_MS,
        started_ms=TICK_MS + 100,
        finished_ms=TICK_MS + 4_300,
        served_tick_ms=TICK_MS,
        next_tick_ms=NEXT_MS,
        missed_ticks=2,
        last=RunSummary(keys=1_234, entities=1_000, sent=900, skipped=100),
    )
    lines = _scheduled_report(_run(finished), _pending(T0 + 2, (10, 25), (None, 7)))
    assert lines == [
        "scheduled  customers  every 60 s  group g.scheduled.customers",
        "  last run   tick 02:13:00Z, started 02:13:00Z, finished 02:13:04Z (took 4 s)",
        "             1,234 keys, 900 sent, 100 skipped; 2 missed ticks",
        "  next tick  02:14:00Z (in 40 s)",
        "  pending    22 dirty keys on shop.scheduled, - dirty keys/s committed",
    ]


def test_rarer_outcomes_appear_only_when_a_run_had_some() -> None:
    record = RunRecord(
        tick_ms=TICK_MS,
        started_ms=TICK_MS,
        finished_ms=TICK_MS + 1_000,
        served_tick_ms=TICK_MS,
        last=RunSummary(keys=5, sent=1, skipped=0, deleted=1, dead_lettered=2, held=1),
    )
    lines = _scheduled_report(_run(record), _pending(T0, (5, 5)))
    assert lines[2] == (
        "             5 keys, 1 sent, 0 skipped, 1 deleted, 2 dead-lettered, "
        "1 held for the next run; 0 missed ticks"
    )


def test_a_run_in_progress_shows_since_when_what_the_previous_one_did_and_its_pace() -> None:
    running = RunRecord(
        tick_ms=TICK_MS,
        started_ms=TICK_MS + 5_000,
        finished_ms=None,
        served_tick_ms=TICK_MS - 60_000,
        missed_ticks=1,
        last=RunSummary(keys=40, entities=30, sent=30),
    )
    earlier = _pending(T0, (1_000, 5_000))
    now = _pending(T0 + 2, (3_000, 5_000))  # 2,000 committed in 2 s
    lines = _scheduled_report(_run(running), now, earlier)
    assert lines[1:] == [
        "  running    tick 02:13:00Z, started 02:13:05Z (15 s ago); 1 missed tick",
        "  previous   tick 02:12:00Z: 40 keys, 30 sent, 0 skipped",
        "  next tick  02:14:00Z (in 40 s)",
        "  pending    2,000 dirty keys on shop.scheduled, 1,000 dirty keys/s committed",
    ]


def test_a_due_tick_without_a_finished_run_is_called_overdue() -> None:
    # The service was down over the tick: the last one served is an hour back.
    stale = RunRecord(
        tick_ms=TICK_MS - 3_600_000,
        started_ms=TICK_MS - 3_600_000,
        finished_ms=TICK_MS - 3_590_000,
        served_tick_ms=TICK_MS - 3_600_000,
    )
    lines = _scheduled_report(_run(stale), _pending(T0, (0, 3)))
    assert lines[3:5] == [
        "  next tick  02:14:00Z (in 40 s)",
        "  overdue    the tick of 02:13:00Z has no finished run: a running process takes it "
        "within seconds, a starting one at once",
    ]
    served = RunRecord(
        tick_ms=TICK_MS, started_ms=TICK_MS, finished_ms=TICK_MS + 1, served_tick_ms=TICK_MS
    )
    assert not any("overdue" in line for line in _scheduled_report(_run(served), _pending(T0)))


def test_no_run_yet_and_an_unreadable_record_still_show_the_ticks_and_the_pending_keys() -> None:
    first = _scheduled_report(_run(RunRecord()), _pending(T0, (None, 12)))
    assert first[1] == "  last run   none yet"
    assert first[3].startswith("  overdue    the tick of 02:13:00Z has no finished run")
    assert first[-1].startswith("  pending    12 dirty keys")

    error = "scheduled run record unavailable (Redis): Connection refused"
    unknown = _scheduled_report(_run(None, error), _pending(T0, (None, 12)))
    assert unknown[1:] == [
        f"  last run   unknown: {error}",
        "  next tick  02:14:00Z (in 40 s)",
        "  pending    12 dirty keys on shop.scheduled, - dirty keys/s committed",
    ]


def test_a_tick_on_another_day_carries_its_date() -> None:
    yesterday = TICK_MS - 86_400_000
    record = RunRecord(
        tick_ms=yesterday,
        started_ms=yesterday,
        finished_ms=yesterday + 1_000,
        served_tick_ms=yesterday,
    )
    lines = _scheduled_report(_run(record), _pending(T0, (3, 3)))
    assert lines[1].startswith("  last run   tick 2026-11-22 02:13:00Z, started 2026-11-22")


def test_without_scheduled_resources_there_is_no_scheduled_section() -> None:
    lines = render(_report((ServiceHealth(None, error="none"),)))
    assert not any(line.startswith("scheduled") for line in lines)


def test_with_several_scheduled_resources_pending_says_the_topic_is_shared() -> None:
    customers = _pending(T0, (0, 4))
    orders = GroupOffsets("scheduled", "g.scheduled.orders", customers.partitions, T0)
    other = ScheduledRun("orders", "every 60 s", "g.scheduled.orders", TICK_MS, NEXT_MS, None, "x")
    report = StatusReport(
        "shop.yaml",
        TAKEN_AT_MS,
        Sample((), DeadLetters("shop.dlq", 0), (customers, orders)),
        None,
        runs=(_run(RunRecord()), other),
    )
    pending = [line for line in render(report) if line.startswith("  pending")]
    shared = " (every scheduled resource's keys past this group's commits)"
    assert (
        pending
        == [f"  pending    4 dirty keys on shop.scheduled, - dirty keys/s committed{shared}"] * 2
    )
