"""deploy/kubernetes/: the manifests render, every object is valid for Kubernetes and for the
operators whose kinds it uses (KEDA, Strimzi, the Prometheus operator), and they say what the
code serves and reads: the probes' routes and port, each role's command line, the environment
the definition is loaded from, the consumer groups and topics KEDA watches, the drain bounds.

No cluster: the committed renders (deploy/kubernetes/rendered/) are checked against a fresh
``kustomize build`` where one is installed, and always against tests/kustomize_lite.py; the
schemas are kubernetes-validate's and the CRDs' own (tests/fixtures/schemas/crds/README.md).
"""

from __future__ import annotations

import asyncio
import copy
import importlib.resources
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import certifi
import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from referencing import Registry, Resource

from consumer.cli.common import definition_path
from consumer.cli.main import build_parser
from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.kafka import CLOSE_BOUND_S
from consumer.kafka_settings import CONSUMER_DEFAULTS
from consumer.observe.health import HealthServer, Snapshot
from consumer.router import loop as router_loop
from consumer.schedule.scheduler import COMMIT_BOUND_S as SCHEDULER_COMMIT_BOUND_S
from consumer.schedule.scheduler import DRAIN_BOUND_S as SCHEDULER_DRAIN_BOUND_S
from consumer.service import RESYNC_STOP_BOUND_S
from consumer.syncer import loop as syncer_loop
from tests.alerts import alert_rules, selectors
from tests.kustomize_lite import KustomizeLiteError, build

Object = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
# Each kustomization and the render committed for it.
RENDERS = {
    "example": KUBERNETES / "overlays" / "example",
    "debezium": KUBERNETES / "debezium",
}
CRD_SCHEMAS = REPO / "tests" / "fixtures" / "schemas" / "crds"
CONNECTOR_JSON = REPO / "deploy" / "debezium" / "shop-connector.json"
# The oldest and the newest Kubernetes the manifests are checked against.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# Besides what the definition names, the one variable the Deployments set: the code reads it.
OTHER_ENVIRONMENT = {"REACH_SYNC_LOG_FORMAT": REPO / "consumer" / "observe" / "logs.py"}
# Seconds the kubelet's grace period must leave after a role's drain bound.
GRACE_MARGIN_S = 15.0
ROLES = ("router", "syncer")
# librdkafka's sasl.mechanisms as KEDA's Kafka scaler names them (its `sasl`).
KEDA_SASL = {
    "PLAIN": "plaintext",
    "SCRAM-SHA-256": "scram_sha256",
    "SCRAM-SHA-512": "scram_sha512",
    "OAUTHBEARER": "oauthbearer",
    "GSSAPI": "gssapi",
}
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# --- the renders ---------------------------------------------------------------------------------


def _committed(name: str) -> list[Object]:
    text = (KUBERNETES / "rendered" / f"{name}.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _key(obj: Object) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def _kustomize() -> list[str] | None:
    """A kustomize v5 command line, ``kustomize build`` or ``kubectl kustomize``; None if none."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        done = subprocess.run(
            ["kubectl", "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        try:
            version = str(json.loads(done.stdout).get("kustomizeVersion", ""))
        except json.JSONDecodeError:
            version = ""
        if version.startswith("v5"):
            return ["kubectl", "kustomize"]
    return None


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_a_committed_render_is_what_kustomize_builds_from_the_sources(name: str) -> None:
    command = _kustomize()
    if command is None:
        pytest.skip("no kustomize v5 here (kustomize, or kubectl >= 1.27); kustomize_lite checks")
    done = subprocess.run(
        [*command, str(RENDERS[name])], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    fresh = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert _committed(name) == fresh, (
        f"deploy/kubernetes/rendered/{name}.yaml is stale: render it again "
        "(deploy/kubernetes/README.md, 'Rendering')"
    )


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_a_committed_render_is_what_kustomize_lite_builds_from_the_sources(name: str) -> None:
    fresh = sorted(build(RENDERS[name]), key=_key)
    assert sorted(_committed(name), key=_key) == fresh


def test_kustomize_lite_refuses_a_kustomization_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches:\n  - path: patch.yaml\n"
    )
    with pytest.raises(KustomizeLiteError, match="patches"):
        build(tmp_path)


# --- schemas -------------------------------------------------------------------------------------


def _all_objects() -> list[Object]:
    return [obj for name in sorted(RENDERS) for obj in _committed(name)]


def _crd_schema_file(api_version: str, kind: str) -> Path:
    group, _, version = api_version.rpartition("/")
    return CRD_SCHEMAS / f"{group or 'core'}_{version}_{kind.lower()}.json"


def _strict(schema: Any) -> Any:
    """A CRD schema as the API server applies it under ``kubectl apply``'s strict field
    validation (the default since Kubernetes 1.25): an unknown field of an object with declared
    properties is an error, unless the schema preserves unknown fields."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in strict
        and "additionalProperties" not in strict
        and not strict.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def _kubernetes_definitions(version: str) -> Object:
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = schemas / f"v{version}.0-local-strict" / "_definitions.json"
    definitions: Object = json.loads(path.read_text())
    return definitions


def _validate_custom(obj: Object, schema_file: Path, version: str) -> None:
    """``obj`` against its CRD's schema (strict), and its metadata against ObjectMeta."""
    schema = _strict(json.loads(schema_file.read_text()))
    jsonschema.Draft202012Validator(schema).validate(obj)
    definitions = _kubernetes_definitions(version)
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    meta = {"$ref": f"{definitions['$id']}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    jsonschema.Draft202012Validator(meta, registry=registry).validate(obj["metadata"])


def _validate(obj: Object, version: str) -> None:
    schema_file = _crd_schema_file(obj["apiVersion"], obj["kind"])
    if schema_file.exists():
        _validate_custom(obj, schema_file, version)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


def _ids(objects: list[Object]) -> list[str]:
    return [f"{obj['kind']}/{obj['metadata']['name']}" for obj in objects]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("obj", _all_objects(), ids=_ids(_all_objects()))
def test_every_rendered_object_is_valid_against_its_schema(obj: Object, version: str) -> None:
    _validate(obj, version)


def _misspelt(obj: Object, path: tuple[str | int, ...], field: str) -> Object:
    broken = copy.deepcopy(obj)
    node: Any = broken
    for part in path:
        node = node[part]
    node[field + "x"] = node.pop(field)
    return broken


@pytest.mark.parametrize(
    ("kind", "path", "field"),
    [
        ("Deployment", ("spec", "template", "spec"), "terminationGracePeriodSeconds"),
        ("ScaledObject", ("spec",), "maxReplicaCount"),
        ("ScaledObject", ("spec", "triggers", 0), "authenticationRef"),
        ("TriggerAuthentication", ("spec", "secretTargetRef", 0), "parameter"),
        ("ServiceMonitor", ("spec", "endpoints", 0), "path"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0), "expr"),
        ("KafkaConnector", ("spec",), "tasksMax"),
        ("ScaledObject", ("metadata",), "labels"),
    ],
)
def test_the_schemas_refuse_a_misspelt_field(
    kind: str, path: tuple[str | int, ...], field: str
) -> None:
    (obj,) = [o for o in _all_objects() if o["kind"] == kind][:1]
    with pytest.raises(jsonschema.ValidationError):
        _validate(_misspelt(obj, path, field), KUBERNETES_VERSIONS[-1])


def test_the_connector_is_valid_for_strimzi_before_0_49_as_v1beta2_too() -> None:
    (connector,) = [o for o in _committed("debezium") if o["kind"] == "KafkaConnector"]
    older = {**connector, "apiVersion": "kafka.strimzi.io/v1beta2"}
    _validate(older, KUBERNETES_VERSIONS[0])


# --- what the code serves and reads --------------------------------------------------------------


def _example() -> list[Object]:
    return _committed("example")


def _one(kind: str, name: str | None = None, role: str | None = None) -> Object:
    found = [
        obj
        for obj in _example()
        if obj["kind"] == kind
        and (name is None or obj["metadata"]["name"] == name)
        and (role is None or obj["metadata"]["labels"].get("app.kubernetes.io/component") == role)
    ]
    assert len(found) == 1, f"{kind} {name or role}: {len(found)} found"
    return found[0]


def _container(deployment: Object) -> Object:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return cast(Object, container)


def _pod_root(root: Path, deployment: Object) -> None:
    """The pod's mounted files under ``root``: the definition from its ConfigMap, each Secret
    item as a placeholder (ca.crt a real CA bundle, as librdkafka reads it)."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in _container(deployment)["volumeMounts"]:
        volume = volumes[mount["name"]]
        directory = root / mount["mountPath"].lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            data = _one("ConfigMap", volume["configMap"]["name"])["data"]
            for item in volume["configMap"]["items"]:
                (directory / item["path"]).write_text(data[item["key"]])
        elif "secret" in volume:
            for item in volume["secret"]["items"]:
                content = Path(certifi.where()).read_text() if item["key"] == "ca.crt" else "s3cret"
                (directory / item["path"]).write_text(content)


def _environment(deployment: Object) -> dict[str, str]:
    """The container's environment: ConfigMap values as rendered, each Secret value a
    placeholder naming its secret and key."""
    env: dict[str, str] = {}
    for entry in _container(deployment)["env"]:
        source = entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[entry["name"]] = _one("ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            ref = source["secretKeyRef"]
            env[entry["name"]] = f"secret-{ref['name']}-{ref['key']}"
    return env


def _args(deployment: Object) -> Any:
    return build_parser().parse_args(_container(deployment)["args"])


def _definition_text(deployment: Object) -> str:
    (configmap,) = [
        volume["configMap"]
        for volume in deployment["spec"]["template"]["spec"]["volumes"]
        if "configMap" in volume
    ]
    data: str = _one("ConfigMap", configmap["name"])["data"]["sync.yaml"]
    return data


def _strings(node: Any) -> Iterator[tuple[str, str]]:
    """Every (key, string value) of the parsed YAML; comments are not values."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield str(key), value
            else:
                yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _named_variables(text: str) -> tuple[set[str], dict[str, str], set[str]]:
    """What the definition reads from the environment: variables without a default, those with
    one (and the default), and the variables its secrets come from (``*_env``, and those
    interpolated into SASL settings)."""
    required: set[str] = set()
    defaulted: dict[str, str] = {}
    secrets: set[str] = set()
    for key, value in _strings(yaml.safe_load(text)):
        if key.endswith("_env"):
            required.add(value)
            secrets.add(value)
        for name, default in _REFERENCE.findall(value):
            if default:
                defaulted[name] = default
            else:
                required.add(name)
            if key.startswith("sasl.") or "password" in key:
                secrets.add(name)
    return required, defaulted, secrets


def _load(tmp_path: Path, deployment: Object) -> tuple[SyncDefinition, dict[str, str]]:
    """The definition as the container loads it, with the project's loader: its file under the
    pod's mounts (``tmp_path`` standing for /), in the container's environment; a default that
    is a path in the pod is moved under ``tmp_path`` too."""
    _pod_root(tmp_path, deployment)
    env = _environment(deployment)
    _, defaulted, _ = _named_variables(_definition_text(deployment))
    for name, default in defaulted.items():
        if default.startswith("/") and name not in env:
            env[name] = str(tmp_path / default.lstrip("/"))
    path = tmp_path / str(definition_path(_args(deployment))).lstrip("/")
    return load_definition(path, env), env


@pytest.mark.parametrize("role", ROLES)
def test_the_container_runs_its_role_with_the_mounted_definition(role: str) -> None:
    deployment = _one("Deployment", role=role)
    args = _args(deployment)
    assert args.command == "run"
    assert args.role == role
    assert _definition_text(deployment)  # the --config file is the mounted ConfigMap's sync.yaml
    mounts = {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}
    assert mounts[str(definition_path(args).parent)] == "definition"


@pytest.mark.parametrize("role", ROLES)
def test_the_definition_loads_in_the_containers_environment(tmp_path: Path, role: str) -> None:
    deployment = _one("Deployment", role=role)
    definition, env = _load(tmp_path, deployment)
    assert definition.source.kafka.bootstrap_servers == env["REACH_SYNC_BOOTSTRAP_SERVERS"]
    assert definition.source.database.dsn.get_secret_value() == env["REACH_SYNC_DATABASE_URL"]
    assert definition.redis.url.get_secret_value() == env["REACH_SYNC_REDIS_URL"]
    assert definition.destination.auth.secret is not None


@pytest.mark.parametrize("role", ROLES)
def test_the_deployment_sets_exactly_the_variables_the_definition_names(role: str) -> None:
    deployment = _one("Deployment", role=role)
    required, _, secrets = _named_variables(_definition_text(deployment))
    entries = {entry["name"]: entry for entry in _container(deployment)["env"]}
    assert set(entries) - set(OTHER_ENVIRONMENT) == required
    for name, source in OTHER_ENVIRONMENT.items():
        assert name in source.read_text(), f"{name} is not read by {source}"
    for name in secrets:
        assert "secretKeyRef" in entries[name].get("valueFrom", {}), f"{name}: not from a Secret"


def test_the_deployed_definition_syncs_what_examples_shop_yaml_syncs(tmp_path: Path) -> None:
    deployed, _ = _load(tmp_path, _one("Deployment", role="syncer"))
    variables = (
        "REACH_SYNC_BOOTSTRAP_SERVERS REACH_SYNC_REACH_URL REACH_SYNC_PARTNER_ID "
        "REACH_SYNC_JWT_SECRET REACH_SYNC_DATABASE_URL REACH_SYNC_REDIS_URL"
    )
    example = load_definition(
        REPO / "examples" / "shop.yaml",
        {name: "https://reach.example" for name in variables.split()},
    )
    assert deployed.resources == example.resources


def _health_server(definition: SyncDefinition) -> HealthServer:
    """The service's health server with a ready service behind it, on loopback."""
    assert definition.health is not None
    ready = Snapshot(
        assigned_partitions=1,
        reach_ok=True,
        redis_ok=True,
        database_ok=True,
        lag=0,
        last_progress_at=None,
        started_at=time.monotonic(),
    )
    return HealthServer(
        "127.0.0.1",
        0,
        lambda: ready,
        definition.health.stall_after_s,
        metrics=lambda: (b"reach_sync_events_consumed_total 0\n", "text/plain; version=0.0.4"),
    )


def _get(port: int, path: str) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{port}{path}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return int(answer.status), bytes(answer.read())


@pytest.mark.parametrize("role", ROLES)
def test_the_probes_ask_the_routes_and_port_the_service_serves(tmp_path: Path, role: str) -> None:
    deployment = _one("Deployment", role=role)
    definition, _ = _load(tmp_path, deployment)
    container = _container(deployment)
    assert definition.health is not None
    assert definition.health.host == "0.0.0.0"  # the kubelet probes from outside the pod
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": definition.health.port}
    server = _health_server(definition)
    server.start()
    try:
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == "metrics"
            assert _get(server.port, container[probe]["httpGet"]["path"]) == (
                200,
                b'{"status":"alive"}',
            )
        readiness = container["readinessProbe"]["httpGet"]
        assert readiness["port"] == "metrics"
        status, body = _get(server.port, readiness["path"])
        assert (status, json.loads(body)["ready"]) == (200, True)
    finally:
        server.close()


def test_prometheus_scrapes_the_metrics_the_service_serves(tmp_path: Path) -> None:
    definition, _ = _load(tmp_path, _one("Deployment", role="syncer"))
    service = _one("Service", "reach-sync-metrics")
    monitor = _one("ServiceMonitor", "reach-sync")
    (port,) = service["spec"]["ports"]
    assert definition.health is not None
    assert (port["name"], port["port"], port["targetPort"]) == (
        "metrics",
        definition.health.port,
        "metrics",
    )
    assert service["spec"]["publishNotReadyAddresses"] is True
    for role in ROLES:
        labels = _one("Deployment", role=role)["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    server = _health_server(definition)
    server.start()
    try:
        assert _get(server.port, endpoint["path"]) == (200, b"reach_sync_events_consumed_total 0\n")
    finally:
        server.close()


class _Client:
    """Stands in for confluent-kafka's Producer and Consumer: keeps the settings and the
    subscription, connects to nothing."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.subscribed: list[str] = []

    def subscribe(self, topics: list[str], **callbacks: object) -> None:
        self.subscribed = list(topics)


class _Subscribed(Exception):
    pass


class _SyncerConsumer(_Client):
    def subscribe(self, topics: list[str], **callbacks: object) -> None:
        super().subscribe(topics)
        raise _Subscribed  # the loop would start here


def _router_consumer(definition: SyncDefinition) -> _Client:
    """The consumer the router makes and subscribes, as its own code makes it."""
    made: list[_Client] = []

    def factory(settings: dict[str, Any]) -> Any:
        made.append(_Client(settings))
        return made[-1]

    router_loop.Router(
        definition, cast(Any, None), None, consumer_factory=factory, producer_factory=_Client
    )
    return made[0]


def _syncer_consumer(definition: SyncDefinition) -> _Client:
    """The consumer the syncer makes and subscribes, as its own code makes it."""
    made: list[_Client] = []

    def factory(settings: dict[str, Any]) -> Any:
        made.append(_SyncerConsumer(settings))
        return made[-1]

    syncer = syncer_loop.Syncer(
        definition, cast(Any, None), cast(Any, None), consumer_factory=factory
    )
    with pytest.raises(_Subscribed):
        asyncio.run(syncer.run(threading.Event()))
    return made[0]


def _connector_config() -> Object:
    config: Object = json.loads(CONNECTOR_JSON.read_text())["config"]
    return config


def _debezium_topics() -> set[str]:
    """The change topics the connector writes: <topic.prefix>.<schema>.<table>."""
    config = _connector_config()
    tables = config["table.include.list"].split(",")
    return {f"{config['topic.prefix']}.{table}" for table in tables}


def _triggers(role: str) -> list[Object]:
    triggers: list[Object] = _one("ScaledObject", role=role)["spec"]["triggers"]
    assert {trigger["type"] for trigger in triggers} == {"kafka"}
    return triggers


def test_the_router_triggers_watch_the_routers_group_and_every_topic_it_reads(
    tmp_path: Path,
) -> None:
    definition, _ = _load(tmp_path, _one("Deployment", role="router"))
    consumer = _router_consumer(definition)
    (pattern,) = consumer.subscribed
    read = {topic for topic in _debezium_topics() if re.search(pattern, topic)}
    triggers = _triggers("router")
    assert read, f"{pattern} matches none of the connector's topics {sorted(_debezium_topics())}"
    assert {trigger["metadata"]["topic"] for trigger in triggers} == read
    assert {trigger["metadata"]["consumerGroup"] for trigger in triggers} == {
        consumer.settings["group.id"]
    }
    scaled = _one("ScaledObject", role="router")["spec"]
    assert scaled["maxReplicaCount"] == int(
        _connector_config()["topic.creation.default.partitions"]
    )


def test_the_syncer_trigger_watches_the_syncers_group_and_topic(tmp_path: Path) -> None:
    definition, _ = _load(tmp_path, _one("Deployment", role="syncer"))
    # A scheduled resource's keys wait on another topic, read by a group of its own.
    assert definition.scheduled_resources() == [], "add a trigger for each scheduled group"
    consumer = _syncer_consumer(definition)
    (trigger,) = _triggers("syncer")
    assert [trigger["metadata"]["topic"]] == consumer.subscribed
    assert trigger["metadata"]["consumerGroup"] == consumer.settings["group.id"]
    scaled = _one("ScaledObject", role="syncer")["spec"]
    assert scaled["maxReplicaCount"] == definition.topics.dirty_partitions


@pytest.mark.parametrize("role", ROLES)
def test_keda_reaches_the_broker_as_the_role_does(tmp_path: Path, role: str) -> None:
    deployment = _one("Deployment", role=role)
    definition, env = _load(tmp_path, deployment)
    scaled = _one("ScaledObject", role=role)
    assert scaled["spec"]["scaleTargetRef"] == {"name": deployment["metadata"]["name"]}
    settings = definition.source.kafka.client_settings
    secret_keys = {
        (ref["name"], ref["key"])
        for entry in _container(deployment)["env"]
        if (ref := entry.get("valueFrom", {}).get("secretKeyRef"))
    }
    for trigger in _triggers(role):
        metadata = trigger["metadata"]
        assert env[metadata["bootstrapServersFromEnv"]] == definition.source.kafka.bootstrap_servers
        assert metadata["offsetResetPolicy"] == CONSUMER_DEFAULTS["auto.offset.reset"]
        assert "auto.offset.reset" not in {**settings, **definition.source.kafka.consumer_settings}
        assert int(metadata["lagThreshold"]) > 0
        assert metadata["tls"] == (
            "enable" if settings["security.protocol"] == "SASL_SSL" else "disable"
        )
        assert metadata["sasl"] == KEDA_SASL[str(settings["sasl.mechanisms"])]
        auth = _one("TriggerAuthentication", trigger["authenticationRef"]["name"])
        refs = {
            ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]
        }
        assert {refs["username"], refs["password"]} <= secret_keys
        ca_volumes = [
            volume["secret"]
            for volume in deployment["spec"]["template"]["spec"]["volumes"]
            if "secret" in volume and refs["ca"][0] == volume["secret"]["secretName"]
        ]
        assert [item["key"] for volume in ca_volumes for item in volume["items"]] == [refs["ca"][1]]


def _router_stop_bound_s() -> float:
    return max(router_loop.STOP_BOUND_S, RESYNC_STOP_BOUND_S)


def _syncer_stop_bound_s() -> float:
    loop = (
        syncer_loop.POLL_TIMEOUT_S
        + syncer_loop.DRAIN_BOUND_S
        + syncer_loop.PRODUCER_FLUSH_S
        + syncer_loop.FINAL_COMMIT_BOUND_S
        + CLOSE_BOUND_S
    )
    return max(loop, SCHEDULER_DRAIN_BOUND_S + SCHEDULER_COMMIT_BOUND_S)


@pytest.mark.parametrize(
    ("role", "bound_s"), [("router", _router_stop_bound_s()), ("syncer", _syncer_stop_bound_s())]
)
def test_the_grace_period_outlasts_the_roles_drain_bound(role: str, bound_s: float) -> None:
    grace = _one("Deployment", role=role)["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert grace >= bound_s + GRACE_MARGIN_S, f"{role}: drain bound {bound_s} s, grace {grace} s"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_is_locked_down_budgeted_and_scaled_by_keda_alone(role: str) -> None:
    deployment = _one("Deployment", role=role)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert "replicas" not in deployment["spec"]  # KEDA's HPA owns it
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = _one("PodDisruptionBudget", role=role)
    assert (
        budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    resources = container["resources"]
    for what in ("cpu", "memory"):
        assert what in resources["requests"] and what in resources["limits"]


def test_the_connector_is_deploy_debezium_shop_connector_json() -> None:
    (connector,) = [o for o in _committed("debezium") if o["kind"] == "KafkaConnector"]
    expected = json.loads(CONNECTOR_JSON.read_text())
    config = dict(expected["config"])
    assert connector["metadata"]["name"] == expected["name"]
    assert connector["spec"]["class"] == config.pop("connector.class")
    assert connector["spec"]["config"] == config


def _secret_keys_used() -> set[tuple[str, str]]:
    used: set[tuple[str, str]] = set()
    for obj in _example():
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            for entry in _container(obj)["env"]:
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    used.add((ref["name"], ref["key"]))
            for volume in pod["volumes"]:
                if "secret" in volume:
                    name = volume["secret"]["secretName"]
                    used |= {(name, item["key"]) for item in volume["secret"]["items"]}
        elif obj["kind"] == "TriggerAuthentication":
            used |= {(ref["name"], ref["key"]) for ref in obj["spec"]["secretTargetRef"]}
    return used


def test_the_readme_creates_every_secret_key_the_manifests_use() -> None:
    readme = (KUBERNETES / "README.md").read_text()
    created: set[tuple[str, str]] = set()
    for command in re.findall(r"create secret generic (?:[^\n\\]|\\\n)*", readme):
        name = command.split()[3]
        keys = re.findall(r"--from-(?:literal|file)=([^=\s]+)=", command)
        created |= {(name, key) for key in keys}
    assert created == _secret_keys_used()


# --- alerts --------------------------------------------------------------------------------------

# Labels the alerts read that reach-sync does not set: Prometheus', kube-state-metrics', the
# histogram's bucket bound.
FOREIGN_LABELS = {"namespace", "pod", "container", "condition", "le"}
# A Prometheus name's endings that are not part of its OpenTelemetry instrument's name: the
# histogram's series, a counter's ``_total``, the unit.
_PROMETHEUS_ENDINGS = ("_bucket", "_count", "_sum", "_total", "_seconds", "_bytes")
_OBSERVE = REPO / "consumer" / "observe"


def _alerts() -> list[Object]:
    (rule,) = [o for o in _all_objects() if o["kind"] == "PrometheusRule"]
    return alert_rules(rule)


def _instrument(prometheus_name: str) -> str:
    """The OpenTelemetry instrument behind a Prometheus name, as the exporter makes it."""
    for ending in _PROMETHEUS_ENDINGS:
        prometheus_name = prometheus_name.removesuffix(ending)
    return prometheus_name


def _exported_names() -> set[str]:
    """Every ``reach_sync.*`` name written in consumer/observe (instruments and attributes),
    with its dots as Prometheus writes them."""
    text = "".join(path.read_text() for path in _OBSERVE.glob("*.py"))
    dotted = set(re.findall(r'"(reach_sync\.[a-z_.]+|http\.[a-z_.]+|error\.type)"', text))
    return {name.replace(".", "_") for name in dotted}


def test_every_alert_is_valid_promql_reading_what_reach_sync_exports() -> None:
    exported = _exported_names()
    assert "reach_sync_consumer_lag" in exported  # the scan finds what it looks for
    alerts = _alerts()
    assert alerts, "no alerts"
    for alert in alerts:
        parsed = promql_parser.parse(alert["expr"])
        found = list(selectors(parsed))
        ours = [(metric, labels) for metric, labels in found if metric.startswith("reach_sync_")]
        assert found, alert["alert"]
        for metric, labels in ours:
            assert _instrument(metric) in exported, f"{alert['alert']}: {metric}"
            assert labels - FOREIGN_LABELS <= exported, f"{alert['alert']}: {labels}"


def test_an_alert_on_a_metric_reach_sync_does_not_export_is_refused() -> None:
    exported = _exported_names()
    assert _instrument("reach_sync_consumer_lag") in exported
    assert _instrument("reach_sync_dead_letters_total") in exported
    assert _instrument("reach_sync_commit_to_accept_duration_seconds_bucket") in exported
    assert _instrument("reach_sync_deadletters_total") not in exported
    assert "reach_sync_stage" in exported and "reach_sync_stag" not in exported


def test_every_alert_names_its_runbook_entry_in_the_operations_manual() -> None:
    docs = {
        "docs/operations.md": (REPO / "docs" / "operations.md").read_text(),
        "docs/benchmarks.md": (REPO / "docs" / "benchmarks.md").read_text(),
    }
    for alert in _alerts():
        page, _, entries = alert["annotations"]["runbook"].partition(": ")
        for entry in entries.split("; "):
            assert re.search(rf"^#+ {re.escape(entry)}$", docs[page], re.M), (
                f"{alert['alert']}: no heading {entry!r} in {page}"
            )
