"""The whole local stack in one state directory: broker, Postgres, Redis, sandbox, Debezium.

``LocalStack`` owns the child processes. It is used in-process by the test fixtures and the demo,
and by the detached supervisor behind ``reach-sync dev up``. The servers that do not depend on
each other start at the same time; Debezium starts last because it needs the shop tables. With
``format="avro"`` a schema registry (``registry``, a double of Confluent's) starts among the
servers, and Debezium writes Avro in the Confluent wire format with its schemas there.

One component can be stopped, started and restarted while the rest runs
(``stop_component``...), from the spec and readiness probe it was launched with: same port,
same data, same credentials. What survives is what the component keeps on disk: Postgres its
data directory, the sandbox its SQLite state, Debezium its offsets, the registry its schemas (so
the ids in the topics stay readable); Redis has no persistence on
purpose and comes back empty. The memory broker would come back empty too, with nothing for
Debezium or a consumer to resume from, so it is only restarted when durable: its topics are then
in the ``s3`` component, which keeps them on disk and may be restarted as well.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml

from reach_devstack import broker, postgres, redis, registry, s3
from reach_devstack.process import (
    ComponentError,
    ManagedProcess,
    ProcessSpec,
    free_port,
    require_free_port,
    unprivileged_user,
    wait_until,
)

if TYPE_CHECKING:
    from reach_sandbox.config import SandboxConfig

__all__ = [
    "DEV_TENANTS",
    "LOCAL_SESSION_TIMEOUT_MS",
    "LocalStack",
    "StackEndpoints",
    "StackOptions",
    "stack_env",
    "with_reach_schemas",
    "with_shop_schemas",
]

# Readiness bounds, generous for a shared 2-core machine: the servers are ready in well under a
# second here, Debezium (a JVM plus the initial snapshot) in several seconds.
SERVER_READY_TIMEOUT_S = 60.0
DEBEZIUM_READY_TIMEOUT_S = 180.0
PARTNER_ID = "reach-sync-dev"
DATABASE = "shop"
DB_USER = "reach"
# The shop's merchants are Reach tenants; the sandbox knows them by these external ids.
DEV_TENANTS: tuple[tuple[str, str], ...] = tuple(
    (f"tenant-{n}", f"merchant-{n}") for n in (1, 2, 3)
)
SHOP_TABLES = ("public.merchants", "public.customers", "public.transactions")
SHOP_REACH_SCHEMAS = Path(__file__).with_name("shop_reach_schemas.yaml")
# The state directory's per-component folders, all recreated on start.
COMPONENT_DIRS = ("postgres", "redis", "sandbox", "debezium", "registry", "s3")
# What Debezium writes: Kafka Connect's JSON, or Avro in the Confluent wire format with its
# schemas in the stack's schema registry (docs/local-stack.md).
FORMATS = ("json", "avro")
# Joins on the local broker take about half the session timeout (docs/local-stack.md).
LOCAL_SESSION_TIMEOUT_MS = 6000
LOCAL_FETCH_WAIT_MS = 10


@dataclass(frozen=True)
class StackOptions:
    """What to start and where; port 0 means a free loopback port."""

    state_dir: Path
    broker_port: int = 0
    postgres_port: int = 0
    redis_port: int = 0
    sandbox_port: int = 0
    with_debezium: bool = True
    # Debezium's JSON with the schema block (Kafka Connect's default) or without.
    debezium_schemas: bool = True
    seed_customers: int = 200
    seed_transactions: int = 600
    topic_prefix: str = "shop"
    # Debezium's snapshot.mode: "initial" streams every seeded row first; "no_data" streams
    # changes only, for history that must come from `reach-sync backfill`.
    snapshot_mode: str = "initial"
    # Without the broker (and so without Debezium): Postgres, Redis and the sandbox only, as
    # `reach-sync test` runs a definition's cases without Kafka.
    with_broker: bool = True
    # Create and seed the sample shop's tables; off, the database starts empty.
    seed_shop: bool = True
    # The Reach schemas the sandbox holds besides Reach's defaults (a YAML list of schema
    # definitions), and the tenants it knows: (Reach id, external id) pairs.
    reach_schemas: Path | None = SHOP_REACH_SCHEMAS
    tenants: tuple[tuple[str, str], ...] = DEV_TENANTS
    # The tables Debezium captures.
    debezium_tables: tuple[str, ...] = SHOP_TABLES
    # The broker's topics and offsets in S3 (a SeaweedFS server, the "s3" component, its data on
    # disk) rather than in its memory, so that the broker can be restarted without losing them.
    durable_broker: bool = False
    # "json", or "avro": a schema registry (the "registry" component) and Debezium's Avro.
    format: str = "json"
    registry_port: int = 0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.format == "avro" and not self.debezium_schemas:
            raise ValueError("debezium_schemas=False (--no-schemas) is for JSON only")


@dataclass(frozen=True)
class StackEndpoints:
    """Everything a script or test needs to talk to the running stack (`dev up --json`)."""

    state_dir: str
    logs_dir: str
    bootstrap_servers: str
    postgres_dsn: str
    redis_url: str
    sandbox_url: str
    sandbox_admin_token: str
    reach_partner_id: str
    reach_jwt_secret: str
    reach_static_key: str
    tenants: list[dict[str, str]]
    topic_prefix: str
    debezium_tables: list[str]
    debezium_schemas: bool
    pids: dict[str, int] = field(default_factory=dict)
    # Tansu's storage URL: memory://, or s3:// for the durable broker.
    broker_storage: str = broker.MEMORY_STORAGE
    # What Debezium writes ("json" or "avro") and, for Avro, where its schemas are.
    source_format: str = "json"
    schema_registry_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def stack_env(endpoints: StackEndpoints) -> dict[str, str]:
    """The environment examples/shop.yaml reads, pointing at this stack: its servers, the
    sandbox as Reach (with the stack's own partner credentials) and the local broker's settings
    (a short session timeout; no LeaveGroup on close, docs/local-broker-group-rejoin.md). The
    consumer group is the definition's own; the demo and the tests add theirs. The source format
    is always set; the schema registry's URL only with Avro (there is none otherwise)."""
    env = {
        "REACH_SYNC_BOOTSTRAP_SERVERS": endpoints.bootstrap_servers,
        "REACH_SYNC_SESSION_TIMEOUT_MS": str(LOCAL_SESSION_TIMEOUT_MS),
        "REACH_SYNC_LEAVE_GROUP_ON_CLOSE": "false",
        # The local broker holds an empty fetch for its whole wait rather than answering when
        # data arrives: each consumer hop would add up to the wait (docs/benchmarks.md).
        "REACH_SYNC_FETCH_WAIT_MS": str(LOCAL_FETCH_WAIT_MS),
        "REACH_SYNC_DATABASE_URL": endpoints.postgres_dsn,
        "REACH_SYNC_REACH_URL": endpoints.sandbox_url,
        "REACH_SYNC_PARTNER_ID": endpoints.reach_partner_id,
        "REACH_SYNC_JWT_SECRET": endpoints.reach_jwt_secret,
        "REACH_SYNC_REDIS_URL": endpoints.redis_url,
        "REACH_SYNC_SOURCE_FORMAT": endpoints.source_format,
    }
    if endpoints.schema_registry_url is not None:
        env["REACH_SYNC_SCHEMA_REGISTRY_URL"] = endpoints.schema_registry_url
    return env


@dataclass(frozen=True)
class _Readiness:
    """How a component is known to be up, kept from its launch so that a restart waits alike."""

    probe: Callable[[], bool]
    timeout_s: float
    # Run before each start: removes what would let the probe pass before the new process is up.
    before_start: Callable[[], None] | None = None


def _port(requested: int, component: str, option: str) -> int:
    if requested == 0:
        return free_port()
    require_free_port(component, requested, option)
    return requested


class LocalStack:
    """Start with ``start()`` (or ``with``); everything stops on ``stop()`` or with this process."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.state_dir = options.state_dir.resolve()
        self.logs_dir = self.state_dir / "logs"
        self.processes: dict[str, ManagedProcess] = {}
        self.startup_seconds: dict[str, float] = {}
        self.endpoints: StackEndpoints | None = None
        self._readiness: dict[str, _Readiness] = {}
        # Components stopped on request (health says "stopped", not how they exited).
        self._stopped: set[str] = set()

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> StackEndpoints:
        """Start every component; on any failure stop what was started and raise ComponentError."""
        started = time.monotonic()
        try:
            self.endpoints = self._start_all()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds["total"] = time.monotonic() - started
        return self.endpoints

    def _launch(
        self,
        spec: ProcessSpec,
        probe: Callable[[], bool],
        timeout_s: float = SERVER_READY_TIMEOUT_S,
        before_start: Callable[[], None] | None = None,
    ) -> ManagedProcess:
        """Start a component (``_wait`` for it later); its spec and probe serve its restarts."""
        self._readiness[spec.name] = _Readiness(probe, timeout_s, before_start)
        if before_start is not None:
            before_start()
        process = ManagedProcess(spec)
        self.processes[spec.name] = process
        process.start()
        return process

    def _start_all(self) -> StackEndpoints:
        opts = self.options
        # Fresh every time: the broker keeps nothing across restarts, so old database contents,
        # change-capture offsets or credentials would only disagree with it.
        for component in COMPONENT_DIRS:
            shutil.rmtree(self.state_dir / component, ignore_errors=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        broker_port = (
            _port(opts.broker_port, broker.NAME, "--broker-port") if opts.with_broker else 0
        )
        durable = opts.with_broker and opts.durable_broker
        s3_ports = s3.S3Ports.free() if durable else None
        s3_url = s3_ports.url if s3_ports is not None else ""
        redis_port = _port(opts.redis_port, redis.NAME, "--redis-port")
        pg_port = _port(opts.postgres_port, postgres.NAME, "--postgres-port")
        sandbox_port = _port(opts.sandbox_port, "sandbox", "--sandbox-port")
        avro = opts.format == "avro"
        registry_port = _port(opts.registry_port, registry.NAME, "--registry-port") if avro else 0
        registry_url = f"http://127.0.0.1:{registry_port}" if avro else None
        bootstrap = f"127.0.0.1:{broker_port}" if opts.with_broker else ""
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        pg = postgres.PostgresConfig(
            bin_dir=postgres.find_postgres_bin(),
            data_dir=self.state_dir / "postgres" / "data",
            port=pg_port,
            user=DB_USER,
            password=secrets.token_urlsafe(18),
            database=DATABASE,
        )
        credentials = _SandboxCredentials.generate()
        run_as = unprivileged_user()

        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        storage = s3.STORAGE_URL if durable else broker.MEMORY_STORAGE

        # Independent servers first, all at once; initdb overlaps with their start-up. The
        # durable broker needs its bucket, so it starts once the S3 server is up.
        s3_proc = (
            self._launch(
                s3.s3_spec(s3_ports, self.state_dir / s3.NAME, self.logs_dir),
                lambda: s3.s3_ready(s3_url),
            )
            if s3_ports is not None
            else None
        )
        broker_proc = (
            self._launch(
                broker.broker_spec(broker_port, self.logs_dir),
                lambda: broker.broker_ready(bootstrap),
            )
            if opts.with_broker and not durable
            else None
        )
        redis_proc = self._launch(
            redis.redis_spec(redis_port, self.state_dir / "redis", self.logs_dir),
            lambda: redis.redis_ready(redis_url),
        )
        sandbox_proc = self._launch(
            self._sandbox_spec(sandbox_port, credentials), lambda: _sandbox_ready(sandbox_url)
        )
        registry_proc = (
            self._launch(
                registry.registry_spec(
                    registry_port, self.state_dir / registry.NAME, self.logs_dir
                ),
                lambda: registry.registry_ready(f"http://127.0.0.1:{registry_port}"),
            )
            if avro
            else None
        )
        postgres.init_cluster(pg, run_as, self.logs_dir / "postgres.log")
        pg_proc = self._launch(
            postgres.postgres_spec(pg, run_as, self.logs_dir),
            lambda: postgres.postgres_ready(pg),
        )
        if s3_proc is not None:
            self._wait(s3_proc)
            s3.create_bucket(s3_url)
            broker_proc = self._launch(
                broker.broker_spec(
                    broker_port, self.logs_dir, storage, s3.broker_storage_env(s3_url)
                ),
                lambda: broker.broker_ready(bootstrap),
            )

        if broker_proc is not None:
            self._wait(broker_proc)
        self._wait(redis_proc)
        self._wait(sandbox_proc)
        if registry_proc is not None:
            self._wait(registry_proc)
        self._wait(pg_proc)
        postgres.create_database(pg)
        if opts.seed_shop:
            self._seed(pg.dsn)

        if opts.with_debezium and opts.with_broker:
            self._start_debezium(pg, bootstrap, registry_url)

        return StackEndpoints(
            state_dir=str(self.state_dir),
            logs_dir=str(self.logs_dir),
            bootstrap_servers=bootstrap,
            postgres_dsn=pg.dsn,
            redis_url=redis_url,
            sandbox_url=sandbox_url,
            sandbox_admin_token=credentials.admin_token,
            reach_partner_id=PARTNER_ID,
            reach_jwt_secret=credentials.partner_secret,
            reach_static_key=credentials.static_key,
            tenants=[{"id": tid, "external_id": ext} for tid, ext in opts.tenants],
            topic_prefix=opts.topic_prefix,
            debezium_tables=list(opts.debezium_tables) if opts.with_debezium else [],
            debezium_schemas=opts.debezium_schemas,
            pids=self.current_pids(),
            broker_storage=storage if opts.with_broker else "",
            source_format=opts.format,
            schema_registry_url=registry_url,
        )

    def _wait(self, process: ManagedProcess) -> None:
        readiness = self._readiness[process.spec.name]
        self.startup_seconds[process.spec.name] = wait_until(
            process, readiness.probe, readiness.timeout_s
        )

    def _sandbox_spec(self, port: int, credentials: _SandboxCredentials) -> ProcessSpec:
        from reach_sandbox.cli import server_command
        from reach_sandbox.config import dev_config, write_sandbox_config

        config_path = self.state_dir / "sandbox" / "sandbox.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config = with_reach_schemas(
            dev_config(
                partner_secret=credentials.partner_secret,
                admin_token=credentials.admin_token,
                static_key=credentials.static_key,
                tenants=list(self.options.tenants),
            ),
            self.options.reach_schemas,
        )
        write_sandbox_config(config, config_path)
        return ProcessSpec(
            name="sandbox",
            argv=server_command(config_path, config_path.parent, port=port),
            log_path=self.logs_dir / "sandbox.log",
        )

    def _seed(self, dsn: str) -> None:
        from reach_devstack.shop import seed

        seed(
            dsn,
            customers=self.options.seed_customers,
            transactions=self.options.seed_transactions,
        )

    def _start_debezium(
        self, pg: postgres.PostgresConfig, bootstrap: str, registry_url: str | None
    ) -> None:
        from reach_devstack.debezium import (
            READY_MARKER,
            DebeziumSettings,
            debezium_command,
            is_ready,
        )

        state = self.state_dir / "debezium"
        state.mkdir(parents=True, exist_ok=True)
        password_file = state / "pg-password"
        password_file.write_text(pg.password)
        password_file.chmod(0o600)
        settings = DebeziumSettings(
            bootstrap_servers=bootstrap,
            pg_host="127.0.0.1",
            pg_port=pg.port,
            pg_user=pg.user,
            pg_password_file=password_file,
            pg_database=pg.database,
            topic_prefix=self.options.topic_prefix,
            tables=self.options.debezium_tables,
            state_dir=state,
            schemas=self.options.debezium_schemas,
            format=self.options.format,
            schema_registry_url=registry_url,
            snapshot_mode=self.options.snapshot_mode,
        )
        spec = ProcessSpec(
            name="debezium",
            argv=debezium_command(settings),
            log_path=self.logs_dir / "debezium.log",
        )
        # The runner removes a stale marker itself, and is_ready checks the marker's pid is
        # alive; removing it before each start as well keeps a restart's wait honest even if
        # the old runner's pid were already reused.
        process = self._launch(
            spec,
            lambda: is_ready(state),
            DEBEZIUM_READY_TIMEOUT_S,
            before_start=lambda: (state / READY_MARKER).unlink(missing_ok=True),
        )
        self._wait(process)

    def health(self) -> dict[str, str]:
        """Per component: "running", "stopped" (on request), or how it ended."""
        report = {}
        for name, process in list(self.processes.items()):
            code = process.exit_code()
            if name in self._stopped:
                report[name] = "stopped"
            else:
                report[name] = "running" if code is None else f"exited with code {code}"
        return report

    def current_pids(self) -> dict[str, int]:
        """The pid of each running component (a restart changes it; a stopped one has none)."""
        return {
            name: process.pid
            for name, process in list(self.processes.items())
            if process.pid is not None and process.alive()
        }

    def stop_component(self, name: str) -> None:
        """Stop one component as ``stop()`` would; it stays stopped until ``start_component``."""
        self._check_stoppable(name)
        if name in self._stopped:
            return  # its old pid may belong to another process by now: not signalled again
        self._stopped.add(name)
        try:
            self.processes[name].stop()
        finally:
            self._refresh_pids()

    def start_component(self, name: str) -> None:
        """Start a stopped (or ended) component from its spec and wait as at stack start."""
        self._check_component(name)
        if self.processes[name].alive():
            raise ComponentError(name, "already running; a restart stops and starts it")
        readiness = self._readiness[name]
        if readiness.before_start is not None:
            readiness.before_start()
        process = ManagedProcess(self.processes[name].spec)
        process.start()
        # Only a started process replaces the old one: the health loop never sees a half one.
        self.processes[name] = process
        self._stopped.discard(name)
        try:
            wait_until(process, readiness.probe, readiness.timeout_s)
        except ComponentError:
            # Not left half up: it is stopped, and the error says why.
            self._stopped.add(name)
            process.stop()
            raise
        finally:
            self._refresh_pids()

    def restart_component(self, name: str) -> None:
        """``stop_component`` then ``start_component``."""
        self._check_stoppable(name)
        self.stop_component(name)
        self.start_component(name)

    def _check_component(self, name: str) -> None:
        if name not in self.processes:
            valid = ", ".join(self.processes) or "none, the stack is not started"
            raise ComponentError(name, f"no such component in this stack; it has: {valid}")

    def _check_stoppable(self, name: str) -> None:
        """Refuse to stop what would come back without the data the rest of the stack expects."""
        self._check_component(name)
        if name == broker.NAME and not self.options.durable_broker:
            raise ComponentError(
                name,
                "memory storage: a broker restart loses every topic and offset, so it is not "
                "stopped alone; start the stack with `reach-sync dev up --durable-broker` for a "
                "broker that keeps them",
            )

    def _refresh_pids(self) -> None:
        if self.endpoints is not None:
            self.endpoints = replace(self.endpoints, pids=self.current_pids())

    def stop(self) -> None:
        """Stop in reverse order of start, so producers go before the broker they write to."""
        errors: list[str] = []
        for name, process in reversed(list(self.processes.items())):
            if name in self._stopped and not process.alive():
                continue  # already stopped on request; its old pid may belong to another now
            try:
                process.stop()
            except Exception as exc:
                errors.append(f"{name}: {exc}")
        if errors:
            raise ComponentError("stack", "some components did not stop: " + "; ".join(errors))


@dataclass(frozen=True)
class _SandboxCredentials:
    """Fresh secrets for each stack: the partner JWT secret, a static key and the admin token."""

    partner_secret: str
    static_key: str
    admin_token: str

    @classmethod
    def generate(cls) -> _SandboxCredentials:
        return cls(
            partner_secret=secrets.token_urlsafe(32),
            static_key="rk_dev_" + secrets.token_urlsafe(24),
            admin_token=secrets.token_urlsafe(24),
        )


def with_shop_schemas(config: SandboxConfig) -> SandboxConfig:
    """The sandbox config plus the shop's Reach schemas (shop_reach_schemas.yaml)."""
    return with_reach_schemas(config, SHOP_REACH_SCHEMAS)


def with_reach_schemas(config: SandboxConfig, path: Path | None) -> SandboxConfig:
    """The sandbox config plus the Reach schemas listed in ``path`` (none: unchanged)."""
    from reach_sandbox.config import SchemaConfig

    if path is None:
        return config
    entries = yaml.safe_load(path.read_text()) or []
    schemas = tuple(SchemaConfig.model_validate(entry) for entry in entries)
    return config.model_copy(update={"schemas": (*config.schemas, *schemas)})


def _sandbox_ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/_admin/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
