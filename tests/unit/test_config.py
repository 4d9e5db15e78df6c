"""The sync definition: the shipped example loads, and every mistake names its field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from consumer.config import ConfigError, load_definition
from tests.shop_definition import EXAMPLE
from tests.shop_definition import OFFLINE_ENV as ENV


def _write(tmp_path: Path, mutate: object) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    mutate(data)  # type: ignore[operator]
    path = tmp_path / "definition.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _problems(path: Path, env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_definition(path, env)
    assert str(caught.value).startswith(str(path))
    return caught.value.problems


def test_the_shop_example_loads_with_env_and_defaults() -> None:
    definition = load_definition(EXAMPLE, ENV)
    assert definition.source.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert definition.source.kafka.group_id == "reach-sync-shop"
    assert definition.source.kafka.session_timeout_ms == 45_000
    assert definition.destination.auth.secret is not None
    assert definition.destination.auth.secret.get_secret_value() == "s3cret-value"
    assert set(definition.resources) == {"customers", "transactions"}
    assert definition.trigger_tables() == {"public.customers", "public.transactions"}
    assert definition.resources["transactions"].delivery.mode == "realtime"
    assert definition.destination.circuit_breaker.open_after_s == 30.0
    assert definition.destination.tenant_probe.interval_s == 30.0


def test_health_is_optional_and_has_defaults(tmp_path: Path) -> None:
    assert load_definition(EXAMPLE, ENV).health is None
    path = _write(tmp_path, lambda d: d.update({"health": {"port": "${HEALTH_PORT:-8081}"}}))
    health = load_definition(path, ENV).health
    assert health is not None
    assert (health.port, health.host, health.stall_after_s) == (8081, "127.0.0.1", 60.0)


def test_secrets_never_show_in_the_repr() -> None:
    definition = load_definition(EXAMPLE, ENV)
    assert "s3cret-value" not in repr(definition)
    assert "pw@" not in repr(definition)


def test_a_missing_environment_variable_names_the_field() -> None:
    env = {k: v for k, v in ENV.items() if k != "REACH_SYNC_BOOTSTRAP_SERVERS"}
    expected = "environment variable REACH_SYNC_BOOTSTRAP_SERVERS is not set"
    assert f"source.kafka.bootstrap_servers: {expected}" in _problems(EXAMPLE, env)


def test_a_missing_secret_names_the_field() -> None:
    env = {k: v for k, v in ENV.items() if k != "REACH_SYNC_JWT_SECRET"}
    assert _problems(EXAMPLE, env) == [
        "destination.auth.secret: environment variable REACH_SYNC_JWT_SECRET is not set"
    ]


def test_a_secret_written_in_the_file_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda d: d["redis"].update({"url": "redis://x"}))
    assert any(p.startswith("redis.url: secrets are not allowed") for p in _problems(path))


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    def mutate(d: dict) -> None:  # type: ignore[type-arg]
        d["resources"]["customers"]["delivery"]["mode"] = "sometimes"
        d["destination"]["batch_size"] = 5000
        d["topics"]["surprise"] = 1

    problems = _problems(_write(tmp_path, mutate))
    assert any(p.startswith("resources.customers.delivery.mode: Input should be") for p in problems)
    assert any(
        p.startswith("destination.batch_size: Input should be less than or equal to 1000")
        for p in problems
    )
    assert "topics.surprise: Extra inputs are not permitted" in problems


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["resources"]["customers"].update({"query": "SELECT 1"}),
            "resources.customers.query: Value error, must use %(ids)s",
        ),
        (
            lambda d: d["resources"]["customers"]["triggers"][0].update({"table": "customers"}),
            "resources.customers.triggers[0].table: String should match pattern",
        ),
        (
            lambda d: d["source"]["kafka"].update({"topics": ["a"]}),
            "source.kafka: Value error, set exactly one of topics or topic_pattern",
        ),
        (
            lambda d: d["source"]["kafka"].update({"topic_pattern": "("}),
            "source.kafka: Value error, topic_pattern is not a valid regular expression",
        ),
        (
            lambda d: d["resources"]["customers"]["mapping"].update({"segments": {"column": "id"}}),
            "resources.customers: Value error, groups.field 'segments' is also in mapping",
        ),
        (
            lambda d: d["destination"]["auth"].pop("partner_id"),
            "destination.auth: Value error, mode jwt needs partner_id",
        ),
        (
            lambda d: d["resources"]["customers"]["groups"]["rules"].append(
                {"name": "high_value", "when": "true"}
            ),
            "resources.customers.groups.rules: Value error, group names must be unique: high_value",
        ),
        (
            lambda d: d["destination"].update({"circuit_breaker": {"open_after_s": 0}}),
            "destination.circuit_breaker.open_after_s: Input should be greater than 0",
        ),
        (
            lambda d: d["destination"].update(
                {"tenant_probe": {"interval_s": 60, "max_interval_s": 10}}
            ),
            "destination.tenant_probe: Value error, max_interval_s must be at least interval_s",
        ),
        (
            lambda d: d.update({"health": {"port": 70000}}),
            "health.port: Input should be less than or equal to 65535",
        ),
        (
            lambda d: d.update({"health": {"port": 8081, "stall_after_s": 0}}),
            "health.stall_after_s: Input should be greater than 0",
        ),
        (lambda d: d.update({"health": {"host": "0.0.0.0"}}), "health.port: Field required"),
        (
            lambda d: d.update({"in_flight": {"max_records": 10}}),
            "in_flight.max_records: Input should be greater than or equal to 100",
        ),
        (
            lambda d: d.update({"in_flight": {"resume_below": 1}}),
            "in_flight.resume_below: Input should be less than 1",
        ),
    ],
)
def test_mistakes_name_the_field_and_the_reason(
    tmp_path: Path, mutate: object, expected: str
) -> None:
    problems = _problems(_write(tmp_path, mutate))
    assert any(p.startswith(expected) for p in problems), problems


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    assert _problems(tmp_path / "missing.yaml") == ["cannot read: No such file or directory"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed")
    assert _problems(bad)[0].startswith("not valid YAML")
