"""Scheduled delivery without servers: the definition's checks (each naming its field, at load
time), when ticks fall (every, cron, time zones and a DST change), and which topic a dirty key
of each resource goes to."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import DefinitionError
from consumer.schedule.when import Schedule
from tests.shop_definition import EXAMPLE
from tests.shop_definition import OFFLINE_ENV as ENV


def _load(tmp_path: Path, customers: dict[str, Any], **topics: str) -> SyncDefinition:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["resources"]["customers"]["delivery"] = customers
    data["topics"].update(topics)
    path = tmp_path / "definition.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_definition(path, ENV)


def _problems(tmp_path: Path, customers: dict[str, Any], **topics: str) -> str:
    with pytest.raises(DefinitionError) as caught:
        _load(tmp_path, customers, **topics)
    return str(caught.value)


def _ms(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


# --- the definition ------------------------------------------------------------------------------


def test_a_scheduled_resource_loads_with_every_or_cron(tmp_path: Path) -> None:
    every = _load(tmp_path, {"mode": "scheduled", "every": "15m"}).resources["customers"]
    assert (every.delivery.every, every.delivery.zone) == ("15m", "UTC")
    cron = _load(
        tmp_path, {"mode": "scheduled", "cron": "0 * * * *", "timezone": "Europe/Berlin"}
    ).resources["customers"]
    assert (cron.delivery.cron, cron.delivery.zone) == ("0 * * * *", "Europe/Berlin")


@pytest.mark.parametrize(
    ("delivery", "expected"),
    [
        (
            {"mode": "scheduled", "cron": "61 * * * *"},
            "resources.customers.delivery.cron: '61 * * * *' is not a cron",
        ),
        (
            {"mode": "scheduled", "cron": "0 * * * *", "timezone": "Mars/Olympus"},
            "resources.customers.delivery.timezone: 'Mars/Olympus' is not an IANA",
        ),
        (
            {"mode": "scheduled", "every": "1.5h"},
            "resources.customers.delivery.every: '1.5h' is not a period",
        ),
        (
            {"mode": "scheduled", "every": "0m"},
            "resources.customers.delivery.every: '0m' is not a period",
        ),
        (
            {"mode": "scheduled", "every": "8d"},
            "resources.customers.delivery.every: '8d' is longer than 7d",
        ),
        (
            {"mode": "scheduled"},
            "resources.customers.delivery: mode scheduled needs exactly one of",
        ),
        (
            {"mode": "scheduled", "every": "1h", "cron": "0 * * * *"},
            "resources.customers.delivery: mode scheduled needs exactly one of",
        ),
        (
            {"mode": "scheduled", "every": "1d", "timezone": "Europe/Berlin"},
            "resources.customers.delivery: timezone applies to cron",
        ),
        (
            {"mode": "batch", "every": "1h"},
            "resources.customers.delivery: every needs mode: scheduled",
        ),
        (
            {"mode": "scheduled", "every": "1h", "new": "realtime"},
            "resources.customers.delivery: new: realtime cannot be combined",
        ),
    ],
)
def test_a_bad_schedule_is_a_definition_error_naming_the_field(
    tmp_path: Path, delivery: dict[str, Any], expected: str
) -> None:
    message = _problems(tmp_path, delivery)
    assert re.search(rf"definition\.yaml:\d+: {re.escape(expected)}", message), message


def test_the_scheduled_topic_defaults_beside_the_dirty_topic_and_must_be_its_own(
    tmp_path: Path,
) -> None:
    definition = _load(tmp_path, {"mode": "scheduled", "every": "1h"})
    dirty = definition.topics.dirty
    assert definition.topics.scheduled == f"{dirty.removesuffix('.dirty')}.scheduled"
    message = _problems(tmp_path, {"mode": "scheduled", "every": "1h"}, scheduled=dirty)
    assert "topics: scheduled must be a topic of its own" in message


def test_a_scheduled_resources_keys_go_to_the_scheduled_topic_and_the_others_to_dirty(
    tmp_path: Path,
) -> None:
    definition = _load(tmp_path, {"mode": "scheduled", "every": "1h"})
    assert definition.scheduled_resources() == ["customers"]
    assert definition.dirty_topic_of("customers") == definition.topics.scheduled
    assert definition.dirty_topic_of("transactions") == definition.topics.dirty
    realtime = _load(tmp_path, {"mode": "realtime"})
    assert realtime.dirty_topic_of("customers") == realtime.topics.dirty
    assert realtime.scheduled_resources() == []


# --- ticks ---------------------------------------------------------------------------------------


def test_every_ticks_on_multiples_of_the_period_from_the_epoch() -> None:
    hourly = Schedule(every_s=3600)
    assert _utc(hourly.next_after(_ms(2024, 5, 1, 10, 20))) == "2024-05-01 11:00"
    assert _utc(hourly.next_after(_ms(2024, 5, 1, 11, 0))) == "2024-05-01 12:00"  # strictly after
    assert _utc(hourly.last_at_or_before(_ms(2024, 5, 1, 11, 0))) == "2024-05-01 11:00"
    assert _utc(Schedule(every_s=900).next_after(_ms(2024, 5, 1, 10, 20))) == "2024-05-01 10:30"
    assert _utc(Schedule(every_s=86_400).next_after(_ms(2024, 5, 1, 10))) == "2024-05-02 00:00"


def test_every_keeps_its_period_across_a_dst_change() -> None:
    """Elapsed time: the night Berlin moves its clocks still has a tick every hour (UTC)."""
    hourly = Schedule(every_s=3600)
    tick, ticks = _ms(2024, 3, 30, 23, 30), []
    for _ in range(4):
        tick = hourly.next_after(tick)
        ticks.append(tick)
    assert [b - a for a, b in itertools.pairwise(ticks)] == [3_600_000] * 3


def test_cron_is_read_in_its_time_zone() -> None:
    berlin_nine = Schedule(cron="0 9 * * *", timezone="Europe/Berlin")
    assert _utc(berlin_nine.next_after(_ms(2024, 1, 15, 0))) == "2024-01-15 08:00"  # CET, +1
    assert _utc(berlin_nine.next_after(_ms(2024, 7, 15, 0))) == "2024-07-15 07:00"  # CEST, +2
    assert _utc(Schedule(cron="0 9 * * *").next_after(_ms(2024, 7, 15, 0))) == "2024-07-15 09:00"


def test_cron_across_dst_changes_skips_the_missing_hour_and_keeps_the_repeated_one() -> None:
    # 2024-03-31 02:30 does not exist in Berlin (02:00 → 03:00): that day's run is at 03:00.
    spring = Schedule(cron="30 2 * * *", timezone="Europe/Berlin")
    assert _utc(spring.next_after(_ms(2024, 3, 30, 12))) == "2024-03-31 01:00"
    assert _utc(spring.next_after(_ms(2024, 3, 31, 1))) == "2024-04-01 00:30"
    # 2024-10-27 02:00-03:00 happens twice (CEST then CET): hourly runs stay an hour apart.
    hourly = Schedule(cron="0 * * * *", timezone="Europe/Berlin")
    tick, seen = _ms(2024, 10, 26, 22, 30), []
    for _ in range(4):
        tick = hourly.next_after(tick)
        seen.append(_utc(tick))
    assert seen == ["2024-10-26 23:00", "2024-10-27 00:00", "2024-10-27 01:00", "2024-10-27 02:00"]


def test_the_last_tick_at_or_before_is_the_one_a_run_now_serves() -> None:
    hourly = Schedule(cron="0 * * * *", timezone="Europe/Berlin")
    assert _utc(hourly.last_at_or_before(_ms(2024, 1, 1, 10, 0))) == "2024-01-01 10:00"
    assert _utc(hourly.last_at_or_before(_ms(2024, 1, 1, 10, 59))) == "2024-01-01 10:00"
    assert hourly.last_at_or_before(_ms(2024, 1, 1, 10, 0) - 1) == _ms(2024, 1, 1, 9, 0)


@pytest.mark.parametrize(
    "make", [lambda: Schedule(every_s=600), lambda: Schedule(cron="*/10 * * * *")]
)
def test_next_after_and_last_at_or_before_agree(make: Callable[[], Schedule]) -> None:
    schedule = make()
    now = _ms(2024, 6, 1, 12, 34)
    last, following = schedule.last_at_or_before(now), schedule.next_after(now)
    assert last <= now < following
    assert schedule.next_after(last) == following
