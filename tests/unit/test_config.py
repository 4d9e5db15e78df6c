"""The sync definition: the shipped example loads, and every mistake names its field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from confluent_kafka import Consumer, KafkaException
from pydantic import ValidationError

from consumer.config import Delivery, KafkaSource
from consumer.config_file import load_definition
from consumer.errors import ConfigurationError, DefinitionError, SyncError
from consumer.kafka import consumer_settings
from consumer.kafka_settings import client_settings_problems
from tests.shop_definition import EXAMPLE
from tests.shop_definition import OFFLINE_ENV as ENV


def _write(tmp_path: Path, mutate: object) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    mutate(data)  # type: ignore[operator]
    path = tmp_path / "definition.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _problems(path: Path, env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
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


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    # YAML keeps the last of two equal keys silently: a field added further down would win
    # over the one a reviewer reads (or lose to it), with no word said.
    text = EXAMPLE.read_text().replace(
        "    pool_size: 4\n", "    pool_size: 4\n    pool_size: 16\n", 1
    )
    text = text.replace("version: 1\n", "version: 1\nversion: 1\n", 1)
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    lines = text.splitlines()
    problems = _problems(path)
    pool = [n + 1 for n, line in enumerate(lines) if line.startswith("    pool_size:")]
    assert (
        f"source.database.pool_size: given twice (lines {pool[0]} and {pool[1]}); keep one"
        in problems
    )
    assert "version: given twice (lines 4 and 5); keep one" in problems
    with pytest.raises(DefinitionError) as caught:
        load_definition(path, ENV)
    assert f"{path}:{pool[0]}: source.database.pool_size: given twice" in str(caught.value)


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
            "resources.customers.query: must use %(ids)s",
        ),
        (
            lambda d: d["resources"]["customers"]["triggers"][0].update({"table": "customers"}),
            "resources.customers.triggers[0].table: String should match pattern",
        ),
        (
            lambda d: d["source"]["kafka"].update({"topics": ["a"]}),
            "source.kafka: set exactly one of topics or topic_pattern",
        ),
        (
            lambda d: d["source"]["kafka"].update({"topic_pattern": "("}),
            "source.kafka: topic_pattern is not a valid regular expression",
        ),
        (
            lambda d: d["resources"]["customers"]["mapping"].update({"segments": {"column": "id"}}),
            "resources.customers: groups.field 'segments' is also in mapping",
        ),
        (
            lambda d: d["destination"]["auth"].pop("partner_id"),
            "destination.auth: mode jwt needs partner_id",
        ),
        (
            lambda d: d["resources"]["customers"]["groups"]["rules"].append(
                {"name": "high_value", "when": "true"}
            ),
            "resources.customers.groups.rules: group names must be unique: high_value",
        ),
        (
            lambda d: d["destination"].update({"circuit_breaker": {"open_after_s": 0}}),
            "destination.circuit_breaker.open_after_s: Input should be greater than 0",
        ),
        (
            lambda d: d["destination"].update(
                {"tenant_probe": {"interval_s": 60, "max_interval_s": 10}}
            ),
            "destination.tenant_probe: max_interval_s must be at least interval_s",
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


# --- the error: one tree --------------------------------------------------------------------------


def test_a_bad_definition_is_a_configuration_error_naming_file_and_field() -> None:
    env = {k: v for k, v in ENV.items() if k != "REACH_SYNC_PARTNER_ID"}
    with pytest.raises(DefinitionError) as caught:
        load_definition(EXAMPLE, env)
    error = caught.value
    assert isinstance(error, ConfigurationError)
    assert isinstance(error, SyncError)
    assert error.source == str(EXAMPLE)
    lines = EXAMPLE.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.strip().startswith("partner_id:"))
    assert str(error) == (
        f"{EXAMPLE}:{line}: destination.auth.partner_id: environment variable "
        "REACH_SYNC_PARTNER_ID is not set"
    )


# --- destination.base_url: no default -----------------------------------------------------------


def test_the_example_takes_reachs_url_from_the_environment_with_no_default() -> None:
    assert "base_url: ${REACH_SYNC_REACH_URL}\n" in EXAMPLE.read_text()
    assert load_definition(EXAMPLE, ENV).destination.base_url == ENV["REACH_SYNC_REACH_URL"]


def test_reachs_url_unset_in_the_environment_names_the_field_once() -> None:
    env = {k: v for k, v in ENV.items() if k != "REACH_SYNC_REACH_URL"}
    # Only the missing variable: not also the pattern the placeholder left behind fails.
    assert _problems(EXAMPLE, env) == [
        "destination.base_url: environment variable REACH_SYNC_REACH_URL is not set"
    ]


def test_a_definition_without_base_url_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda d: d["destination"].pop("base_url"))
    assert _problems(path) == ["destination.base_url: Field required"]


# --- source.kafka.client_settings: what run refuses, validate refuses ----------------------------


def _with_client_settings(tmp_path: Path, settings: dict[str, object]) -> Path:
    return _write(tmp_path, lambda d: d["source"]["kafka"].update({"client_settings": settings}))


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"group.id": "other"}, "group.id is set by reach-sync: set source.kafka.group_id"),
        (
            {"bootstrap.servers": "127.0.0.1:1"},
            "bootstrap.servers is set by reach-sync: set source.kafka.bootstrap_servers",
        ),
        (
            {"metadata.broker.list": "127.0.0.1:1"},
            "metadata.broker.list is set by reach-sync: set source.kafka.bootstrap_servers",
        ),
        (
            {"session.timeout.ms": 6000},
            "session.timeout.ms is set by reach-sync: set source.kafka.session_timeout_ms",
        ),
        ({"logger": "mine"}, "logger is set by reach-sync"),
        ({"enable.auto.commit": True}, "enable.auto.commit must stay false"),
        ({"enable.auto.commit": "true"}, "enable.auto.commit must stay false"),
        ({"enable.auto.offset.store": 1}, "enable.auto.offset.store must stay false"),
        (
            {"secutiry.protocol": "SSL"},
            'librdkafka refuses them: No such configuration property: "secutiry.protocol"',
        ),
        (
            {"fetch.max.bytes": "lots"},
            'librdkafka refuses them: Invalid value for configuration property "fetch.max.bytes"',
        ),
        (
            {"auto.offset.reset": "sometime"},
            'librdkafka refuses them: Invalid value "sometime" for configuration property '
            '"auto.offset.reset"',
        ),
        (
            {"error_cb": "print"},
            "librdkafka refuses them: expected error_cb property as a callable",
        ),
    ],
)
def test_client_settings_run_would_refuse_are_refused(
    tmp_path: Path, settings: dict[str, object], expected: str
) -> None:
    problems = _problems(_with_client_settings(tmp_path, settings))
    prefix = "source.kafka.client_settings: "
    assert any(p.startswith(prefix + expected) for p in problems), problems


@pytest.mark.parametrize(
    "value",
    [{"nested": 1}, [1, 2], None],
    ids=["mapping", "list", "null"],
)
def test_a_client_setting_must_be_a_plain_value(tmp_path: Path, value: object) -> None:
    problems = _problems(_with_client_settings(tmp_path, {"client.id": value}))
    assert all(p.startswith("source.kafka.client_settings.client.id") for p in problems), problems


def test_every_reason_is_given_at_once(tmp_path: Path) -> None:
    path = _with_client_settings(tmp_path, {"group.id": "x", "enable.auto.commit": True})
    (problem,) = _problems(path)
    assert "group.id is set by reach-sync" in problem
    assert "enable.auto.commit must stay false" in problem


def test_client_settings_run_accepts_are_accepted_as_written(tmp_path: Path) -> None:
    settings = {
        "client.id": "shop-sync",
        "socket.timeout.ms": 30_000,
        "security.protocol": "plaintext",
        "enable.auto.commit": "false",  # the value reach-sync uses anyway: allowed
        "enable.auto.offset.store": False,
        "fetch.max.bytes": 8 * 1024 * 1024,
        "isolation.level": "read_committed",
    }
    kafka = load_definition(_with_client_settings(tmp_path, settings), ENV).source.kafka
    assert kafka.client_settings == settings
    # ... and run builds its clients' settings from them (no second check refuses them there).
    built = consumer_settings(kafka, "g.router")
    assert built["client.id"] == "shop-sync"
    assert (built["enable.auto.commit"], built["group.id"]) == (False, "g.router")


@pytest.mark.parametrize(
    "settings",
    [
        {"group.id": "other"},
        {"enable.auto.commit": True},
        {"secutiry.protocol": "SSL"},
        {"fetch.max.bytes": "lots"},
    ],
)
def test_what_the_model_refuses_run_refuses_too(settings: dict[str, object]) -> None:
    """The other side of the promise: these settings, forced past the model, fail in `run`."""
    kafka = KafkaSource.model_construct(
        bootstrap_servers="127.0.0.1:1",
        group_id="g",
        topics=("t",),
        topic_pattern=None,
        session_timeout_ms=6000,
        leave_group_on_close=False,
        client_settings=settings,
    )
    assert client_settings_problems(settings)
    with pytest.raises((ValueError, KafkaException)):
        # Refused before any connection: rule_problems, or librdkafka's configuration.
        Consumer({**consumer_settings(kafka, "g.router"), "log_level": 0})


def test_each_problem_names_the_line_of_the_file_it_is_about(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    lines = text.splitlines()
    window = next(n for n, line in enumerate(lines, 1) if line.strip() == "window_ms: 500")
    lines[window - 1] = lines[window - 1].replace("500", "-1")
    path = tmp_path / "shop.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DefinitionError) as caught:
        load_definition(path, ENV)
    (problem,) = caught.value.problems
    assert problem.startswith("resources.customers.delivery.window_ms: ")
    assert caught.value.lines == [window]
    assert str(caught.value) == f"{path}:{window}: {problem}"


def test_a_missing_field_is_placed_at_its_parent(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda d: d["destination"].pop("base_url"))
    with pytest.raises(DefinitionError) as caught:
        load_definition(path, ENV)
    (problem,) = caught.value.problems
    assert problem.startswith("destination.base_url: ")
    destination = path.read_text().splitlines().index("destination:") + 1
    assert caught.value.lines == [destination]


def test_the_new_vs_updates_hybrid_reads_as_the_guide_writes_it() -> None:
    delivery = Delivery.model_validate({"new": "realtime", "updates": "batch"})
    assert (delivery.mode, delivery.new) == ("batch", "realtime")
    with pytest.raises(ValidationError, match="set mode or updates, not both"):
        Delivery.model_validate({"mode": "batch", "updates": "realtime"})
    with pytest.raises(ValidationError):
        Delivery.model_validate({"mode": "batch", "new": "batch"})


def test_the_every_method_example_loads_with_its_methods() -> None:
    definition = load_definition(EXAMPLE.with_name("shop-methods.yaml"), ENV)
    customers = definition.resources["customers"].delivery
    transactions = definition.resources["transactions"].delivery
    assert (customers.mode, customers.every) == ("scheduled", "1h")
    assert (transactions.mode, transactions.new) == ("batch", "realtime")
    assert definition.dirty_topic_of("customers") == definition.topics.scheduled
    assert definition.dirty_topic_of("transactions") == definition.topics.dirty


def test_consumer_settings_reach_the_consumers_alone_under_the_same_rules(tmp_path: Path) -> None:
    from consumer.kafka import producer_settings

    def with_consumer_settings(settings: dict[str, object]) -> Path:
        return _write(
            tmp_path,
            lambda d: d["source"]["kafka"].update({"consumer_settings": settings}),
        )

    kafka = load_definition(with_consumer_settings({"fetch.wait.max.ms": 10}), ENV).source.kafka
    assert consumer_settings(kafka, "g.syncer")["fetch.wait.max.ms"] == 10
    # A producer would warn that it ignores a consumer property: it never sees them.
    assert "fetch.wait.max.ms" not in producer_settings(kafka)
    problems = _problems(with_consumer_settings({"enable.auto.commit": True}))
    assert any(
        p.startswith("source.kafka.consumer_settings: enable.auto.commit must stay false")
        for p in problems
    ), problems
