"""docker-compose.yaml, checked without Docker: it follows the Compose Specification, and what its
services run, read and publish agrees with the code and the other files of the stack (the sync
definition, the image, the connector, the sandbox, Postgres' init scripts)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft202012Validator
from reach_sandbox.auth import Authenticator
from reach_sandbox.cli import check_config
from reach_sandbox.config import load_sandbox_config

from consumer.cli.main import build_parser
from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import DefinitionError
from consumer.reach.auth import credential_for
from tests.unit.test_dockerfile import (
    DEFINITION_PATH,
    dockerfile,
    health_port,
    healthcheck_argv,
    runtime,
)

ROOT = Path(__file__).parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
DEFINITION = COMPOSE_DIR / "shop.yaml"
SANDBOX_CONFIG = COMPOSE_DIR / "sandbox.yaml"
CONNECTOR = COMPOSE_DIR / "shop-connector.json"
PRODUCTION_CONNECTOR = ROOT / "deploy" / "debezium" / "shop-connector.json"
SHOP_REACH_SCHEMAS = ROOT / "devstack" / "reach_devstack" / "shop_reach_schemas.yaml"
ROLES = ("router", "syncer")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def environment(service: str) -> dict[str, str]:
    env = services()[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment as a mapping, please"
    return {name: str(value) for name, value in env.items()}


def image_environment(service: str) -> dict[str, str]:
    """What a reach-sync container sees: the image's ENV, then the service's environment."""
    return {**runtime().env(), **environment(service)}


def load(service: str) -> SyncDefinition:
    return load_definition(DEFINITION, env=image_environment(service))


def mounts(service: str) -> dict[str, Path]:
    """Container path → repository file, for the service's bind mounts."""
    found: dict[str, Path] = {}
    for volume in services()[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        found[target] = (ROOT / source).resolve()
    return found


def secrets(service: str) -> dict[str, Path]:
    """Container path → repository file, for the service's secrets."""
    defined = compose()["secrets"]
    found: dict[str, Path] = {}
    for entry in services()[service].get("secrets", []):
        source = entry if isinstance(entry, str) else entry["source"]
        default = f"/run/secrets/{source}"
        target = default if isinstance(entry, str) else entry.get("target", default)
        found[target] = (ROOT / defined[source]["file"]).resolve()
    return found


def published(service: str) -> dict[int, str]:
    """Container port → the host address:port it is published on."""
    found: dict[int, str] = {}
    for port in services()[service].get("ports", []):
        host, host_port, container = str(port).rsplit(":", 2)
        found[int(container)] = f"{host}:{host_port}"
    return found


def secret_fields(node: Any, suffix: str) -> Iterator[tuple[str, str]]:
    """Every ``<name>_env`` / ``<name>_file`` field of the definition's YAML: (field, value)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.endswith(suffix) and isinstance(value, str):
                yield key, value
            yield from secret_fields(value, suffix)
    elif isinstance(node, list):
        for item in node:
            yield from secret_fields(item, suffix)


def _text(path: Path) -> str:
    return path.read_text().strip()


# --- the file itself -----------------------------------------------------------------------------


def _compose_schema() -> dict[str, Any]:
    # The Compose Specification's schema (compose-spec/compose-spec, schema/compose-spec.json),
    # as vendored by the dev dependency check-jsonschema.
    vendored = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(vendored.read_text())
    assert schema["title"] == "Compose Specification"
    return schema


def _problems(document: dict[str, Any]) -> list[str]:
    validator = Draft202012Validator(
        _compose_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def test_the_compose_file_follows_the_compose_specification() -> None:
    assert _problems(compose()) == []


def test_the_specification_check_refuses_a_misspelt_key() -> None:
    document = compose()
    document["services"]["redis"]["healthcheck"] = {"test": ["CMD", "true"], "intervall": "5s"}
    assert any("intervall" in problem for problem in _problems(document))


def test_every_published_port_is_on_the_host_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_every_file_it_mounts_or_reads_exists_inside_the_repository() -> None:
    checked = 0
    for name in services():
        for path in [*mounts(name).values(), *secrets(name).values()]:
            assert path.exists(), f"{name}: {path}"
            assert path.is_relative_to(ROOT), f"{name}: {path}"
            checked += 1
    assert checked >= 8


def test_the_built_services_name_stages_of_the_dockerfile() -> None:
    stages = {stage.name for stage in dockerfile().stages}
    built = {name: s["build"] for name, s in services().items() if "build" in s}
    assert set(built) == {"sandbox", "router", "syncer"}
    for name, build in built.items():
        assert build["context"] == "." and build["target"] in stages, name
    assert built["router"]["target"] == built["syncer"]["target"] == runtime().name


def _healthchecked(name: str) -> bool:
    service = services()[name]
    if "healthcheck" in service:
        return True
    build = service.get("build")
    return build is not None and bool(dockerfile().stage(build["target"]).all("HEALTHCHECK"))


def test_every_dependency_condition_can_be_met() -> None:
    for name, service in services().items():
        for needed, condition in service.get("depends_on", {}).items():
            assert needed in services(), f"{name} depends on an unknown {needed}"
            if condition["condition"] == "service_healthy":
                assert _healthchecked(needed), f"{name} waits for {needed}, which has no check"
            elif condition["condition"] == "service_completed_successfully":
                assert services()[needed].get("restart") == "no", needed


# --- reach-sync: roles, definition, environment, secrets, health ---------------------------------


@pytest.mark.parametrize("service", ROLES)
def test_each_reach_sync_service_runs_one_role_with_the_definition_the_image_expects(
    service: str,
) -> None:
    args = build_parser().parse_args(services()[service]["command"])
    assert (args.command, args.role, str(args.config)) == ("run", service, DEFINITION_PATH)
    assert mounts(service)[DEFINITION_PATH] == DEFINITION


@pytest.mark.parametrize("service", ROLES)
def test_the_definition_loads_with_the_services_environment_and_secrets(service: str) -> None:
    raw = yaml.safe_load(DEFINITION.read_text())
    env = image_environment(service)
    # Every ${VAR} without a default, and every *_env, is set for the service.
    unset = [m.group(1) for m in _VAR.finditer(DEFINITION.read_text()) if m.group(2) is None]
    named = [value for _, value in secret_fields(raw, "_env")]
    assert named and [v for v in [*unset, *named] if v not in env] == []
    # Every *_file is mounted where the definition reads it (next to it), from the file that
    # sits next to it in the repository: so loading the repository's file reads the same secret.
    files_named = [value for _, value in secret_fields(raw, "_file")]
    assert files_named
    for relative in files_named:
        in_container = f"{Path(DEFINITION_PATH).parent}/{relative}"
        assert secrets(service)[in_container] == (DEFINITION.parent / relative).resolve()
    definition = load(service)
    assert definition.destination.auth.secret is not None
    assert definition.source.kafka.bootstrap_servers == env["REACH_SYNC_BOOTSTRAP_SERVERS"]


def test_the_definition_is_refused_without_the_services_environment() -> None:
    # The control for the test above: the loader does read what compose sets.
    env = environment("router")
    del env["REACH_SYNC_BOOTSTRAP_SERVERS"]
    with pytest.raises(DefinitionError, match="REACH_SYNC_BOOTSTRAP_SERVERS"):
        load_definition(DEFINITION, env={**runtime().env(), **env})


@pytest.mark.parametrize("service", ROLES)
def test_the_health_port_is_the_one_the_image_checks_exposes_and_compose_publishes(
    service: str,
) -> None:
    health = load(service).health
    assert health is not None, "without a health section the image's HEALTHCHECK fails"
    assert health.port == health_port()
    # The HEALTHCHECK asks 127.0.0.1, compose publishes from outside the container: both.
    assert health.host == "0.0.0.0"
    assert "127.0.0.1" in healthcheck_argv(runtime())[2]
    assert list(published(service)) == [health_port()]


def test_the_two_roles_publish_their_health_on_different_host_ports() -> None:
    hosts = [published(service)[health_port()] for service in ROLES]
    assert len(set(hosts)) == len(hosts)


# --- the stack agrees with itself: endpoints, topics, credentials, tenants -----------------------


def _host_port(address: str) -> tuple[str, int]:
    parsed = urlsplit(address if "//" in address else f"//{address}")
    assert parsed.hostname is not None and parsed.port is not None, address
    return parsed.hostname, parsed.port


def test_the_endpoints_reach_sync_is_given_are_services_of_the_stack() -> None:
    definition = load("syncer")
    kafka = environment("kafka")
    bootstrap = definition.source.kafka.bootstrap_servers
    assert f"PLAINTEXT://{bootstrap}" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    host, port = _host_port(definition.destination.base_url)
    assert host == "sandbox" and str(port) in services()["sandbox"]["command"]
    redis_host, redis_port = _host_port(definition.redis.url.get_secret_value())
    assert (redis_host, redis_port) == ("redis", 6379)
    dsn = urlsplit(definition.source.database.dsn.get_secret_value())
    postgres = environment("postgres")
    assert (dsn.hostname, dsn.port, dsn.path) == ("postgres", 5432, f"/{postgres['POSTGRES_DB']}")


def test_the_connector_feeds_the_topics_and_format_the_definition_reads() -> None:
    definition = load("router")
    connector = json.loads(CONNECTOR.read_text())
    tables = connector["table.include.list"].split(",")
    pattern = re.compile(definition.source.kafka.topic_pattern or "")
    for table in definition.trigger_tables():
        assert table in tables
        assert pattern.fullmatch(f"{connector['topic.prefix']}.{table}"), table
    assert definition.source.kafka.format == "json"
    assert connector["value.converter"] == connector["key.converter"]
    assert connector["value.converter"] == "org.apache.kafka.connect.json.JsonConverter"


def test_the_compose_connector_is_the_example_connector_with_one_replica() -> None:
    example = json.loads(PRODUCTION_CONNECTOR.read_text())["config"]
    ours = json.loads(CONNECTOR.read_text())
    changed = {key for key in example.keys() | ours.keys() if example.get(key) != ours.get(key)}
    assert changed == {"topic.creation.default.replication.factor"}
    assert ours["topic.creation.default.replication.factor"] == "1"
    command = services()["register-connector"]["command"]
    name = json.loads(PRODUCTION_CONNECTOR.read_text())["name"]
    assert f"http://connect:8083/connectors/{name}/config" in command
    data = next(arg for arg in command if arg.startswith("@"))
    assert mounts("register-connector")[data.removeprefix("@")] == CONNECTOR


def test_every_replication_factor_is_one_on_the_one_broker() -> None:
    factors = {
        name: value
        for name, value in {**environment("kafka"), **environment("connect")}.items()
        if "REPLICATION_FACTOR" in name
    }
    assert len(factors) >= 6 and set(factors.values()) == {"1"}, factors
    assert environment("kafka")["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"


def test_the_database_credentials_agree_between_postgres_debezium_and_reach_sync() -> None:
    postgres = environment("postgres")
    password_file = secrets("postgres")[postgres["POSTGRES_PASSWORD_FILE"]]
    connector = json.loads(CONNECTOR.read_text())
    provider = re.fullmatch(r"\$\{file:([^:]+):(\w+)\}", connector["database.password"])
    assert provider is not None
    in_connect, key = provider.groups()
    properties = mounts("connect")
    folder = next(t for t in properties if in_connect.startswith(t + "/"))
    on_disk = properties[folder] / in_connect.removeprefix(folder + "/")
    values = dict(line.split("=", 1) for line in _text(on_disk).splitlines())
    assert values[key] == _text(password_file)
    assert connector["database.user"] == postgres["POSTGRES_USER"]
    assert connector["database.dbname"] == postgres["POSTGRES_DB"]
    # reach-sync's read-only role: the one the init script creates, with its password.
    dsn = urlsplit(load("router").source.database.dsn.get_secret_value())
    init = mounts("postgres")
    role_sql = next(p.read_text() for t, p in init.items() if t.endswith("reach-sync-role.sql"))
    assert f"CREATE ROLE {dsn.username} LOGIN PASSWORD '{dsn.password}'" in role_sql
    assert dsn.username != postgres["POSTGRES_USER"]


def test_postgres_starts_with_the_local_stacks_schema_then_the_seed_then_the_role() -> None:
    init = {t: p for t, p in mounts("postgres").items() if t.startswith("/docker-entrypoint")}
    ordered = [init[target] for target in sorted(init)]
    assert ordered[0] == (ROOT / "devstack" / "reach_devstack" / "shop.sql").resolve()
    assert [p.name for p in ordered[1:]] == ["20-shop-seed.sql", "30-reach-sync-role.sql"]


def test_the_sandbox_is_configured_for_what_reach_sync_sends() -> None:
    config = load_sandbox_config(SANDBOX_CONFIG)
    check_config(config, str(SANDBOX_CONFIG))  # every schema compiles, as at its start-up
    assert mounts("sandbox")["/etc/reach-sandbox/sandbox.yaml"] == SANDBOX_CONFIG
    definition = load("syncer")
    # The JWT reach-sync signs with its secret file is one the sandbox verifies as its partner's.
    token = credential_for(definition.destination.auth).bearer()
    principal = Authenticator(config, revoked=lambda _: False).authenticate(f"Bearer {token}")
    assert (principal.kind, principal.partner_id) == ("partner_jwt", "reach-sync-dev")
    assert principal.partner_id == environment("syncer")["REACH_SYNC_PARTNER_ID"]
    schemas = {schema.name for schema in config.schemas}
    assert {r.reach_schema for r in definition.resources.values()} <= schemas


def test_the_sandbox_knows_the_local_stacks_schemas_and_the_seeded_merchants_as_tenants() -> None:
    config = load_sandbox_config(SANDBOX_CONFIG)
    local = yaml.safe_load(SHOP_REACH_SCHEMAS.read_text())
    ours = yaml.safe_load(SANDBOX_CONFIG.read_text())["schemas"]
    assert ours == local
    seed = (COMPOSE_DIR / "postgres" / "20-shop-seed.sql").read_text()
    merchants = re.findall(r"\(\d+, '[^']+', '([^']+)', '[A-Z]{3}'", seed)
    assert merchants == ["merchant-1", "merchant-2", "merchant-3"]
    assert sorted(t.external_id for t in config.tenants) == merchants
    from reach_devstack.stack import DEV_TENANTS

    assert sorted((t.id, t.external_id) for t in config.tenants) == sorted(DEV_TENANTS)


def test_the_sandbox_service_runs_the_image_command_on_the_exposed_port() -> None:
    sandbox = dockerfile().stage("sandbox")
    assert services()["sandbox"]["command"] == sandbox.one("CMD").json_form()
    assert sandbox.one("EXPOSE").args == "8080"
    assert list(published("sandbox")) == [8080]
    assert "/_admin/health" in healthcheck_argv(sandbox)[2]
    assert "healthcheck" not in services()["sandbox"], "the image's own HEALTHCHECK is used"


@pytest.mark.parametrize("service", ROLES)
def test_compose_waits_for_the_roles_drain_before_killing_it(service: str) -> None:
    # The same bounds, from the code's constants, that the Kubernetes grace periods are held to.
    from tests.unit.test_deploy_kubernetes import (
        GRACE_MARGIN_S,
        _router_stop_bound_s,
        _syncer_stop_bound_s,
    )

    bound_s = _router_stop_bound_s() if service == "router" else _syncer_stop_bound_s()
    grace = re.fullmatch(r"(\d+)s", str(services()[service]["stop_grace_period"]))
    assert grace is not None, "stop_grace_period in whole seconds, please"
    assert int(grace[1]) >= bound_s + GRACE_MARGIN_S, f"{service}: drain bound {bound_s} s"
