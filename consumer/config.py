"""The sync definition: what to sync, validated once at startup, then passed down as data.

A YAML file is read, ``${VAR}`` / ``${VAR:-default}`` references in it are replaced from the
environment (for endpoints that differ per deployment), and the result is validated into frozen,
strict models. Secrets never live in the file: fields ending in ``_env`` or ``_file`` name where
to read them, and they are held as ``SecretStr``. Every error names the file, the field path and
the reason, and all errors are reported at once.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from consumer.kafka_settings import client_settings_problems

__all__ = [
    "Auth",
    "Backfill",
    "CircuitBreaker",
    "DatabaseSource",
    "Delivery",
    "Destination",
    "FieldMapping",
    "GroupRule",
    "HealthSettings",
    "InFlightBounds",
    "KafkaSource",
    "RateLimit",
    "RedisSettings",
    "Resource",
    "Source",
    "SyncDefinition",
    "TenantProbe",
    "Topics",
    "Trigger",
    "every_seconds",
]

# Reach accepts at most 1000 records per batch request (docs/reach-api.md §1).
REACH_MAX_BATCH = 1000
# Reach documents no body limit; 1 MB per request is the client's assumption
# (docs/reach-api.md §7.17).
DEFAULT_MAX_REQUEST_BYTES = 1_000_000
# librdkafka's default; the local broker wants about 6000 (docs/local-stack.md).
DEFAULT_SESSION_TIMEOUT_MS = 45_000

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_TABLE = re.compile(rf"^{_IDENTIFIER}\.{_IDENTIFIER}$")
_COLUMN = re.compile(rf"^{_IDENTIFIER}$")
_REACH_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")

Column = Annotated[str, Field(pattern=_COLUMN.pattern, description="a column of the query")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- source --------------------------------------------------------------------------------------


class SchemaRegistry(_Strict):
    """The Confluent Schema Registry that Avro events' writer schemas come from. The settings
    are the ones ``confluent_kafka.schema_registry.SchemaRegistryClient`` takes (docs/avro.md);
    ``client_settings`` passes others through (OAuth, proxies, several URLs)."""

    url: str = Field(min_length=1, pattern=r"^https?://")
    basic_auth_user_info: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    timeout_s: float = Field(10.0, gt=0, le=300)
    client_settings: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _no_credentials_in_the_url(cls, url: str) -> str:
        # The URL is not a secret (it is logged when the registry is unreachable).
        if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError("give the credentials as basic_auth_user_info_env, not in the url")
        return url

    @field_validator("client_settings")
    @classmethod
    def _not_the_named_ones(
        cls, settings: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        named = {
            "url",
            "basic.auth.user.info",
            "basic.auth.credentials.source",
            "ssl.ca.location",
            "ssl.certificate.location",
            "ssl.key.location",
            "timeout",
            "max.retries",
        }
        taken = sorted(named & settings.keys())
        if taken:
            raise ValueError(f"set {', '.join(taken)} through the named fields, not here")
        return settings


class KafkaSource(_Strict):
    """Where the Debezium topics are and how this consumer group joins.

    ``format``: how the events are serialized. ``json`` is Kafka Connect's JsonConverter (with
    or without schemas); ``avro`` is Confluent's AvroConverter (magic byte, schema id, Avro),
    which needs ``schema_registry``; ``auto`` tells them apart per message by the magic byte
    (a JSON message never starts with a zero byte)."""

    bootstrap_servers: str = Field(min_length=1)
    group_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    topics: tuple[str, ...] = ()
    topic_pattern: str | None = None
    format: Literal["json", "avro", "auto"] = "auto"
    schema_registry: SchemaRegistry | None = None
    session_timeout_ms: int = Field(DEFAULT_SESSION_TIMEOUT_MS, ge=1000, le=300_000)
    # Real Kafka wants a LeaveGroup on close for a fast rebalance; the local broker mishandles
    # it (docs/local-broker-group-rejoin.md), so the local definitions turn it off.
    leave_group_on_close: bool = True
    # Passed through to librdkafka (security, timeouts, ...), after reach-sync's own settings.
    # Checked here as `run` checks them (kafka_settings.py): none that reach-sync sets itself,
    # auto-commit stays off, and librdkafka must accept them.
    client_settings: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # The same, for reach-sync's consumers only (after client_settings): consumer properties
    # such as fetch.wait.max.ms, which producers and admin clients would warn about.
    consumer_settings: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("client_settings", "consumer_settings")
    @classmethod
    def _settings_run_accepts(
        cls, settings: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        problems = client_settings_problems(settings)
        if problems:
            raise ValueError("; ".join(problems))
        return settings

    @model_validator(mode="after")
    def _avro_has_a_registry(self) -> Self:
        if self.format == "avro" and self.schema_registry is None:
            raise ValueError("format avro needs schema_registry (its url at least)")
        return self

    @model_validator(mode="after")
    def _one_way_to_name_topics(self) -> Self:
        if bool(self.topics) == bool(self.topic_pattern):
            raise ValueError("set exactly one of topics or topic_pattern")
        if self.topic_pattern is not None:
            try:
                re.compile(self.topic_pattern)
            except re.error as exc:
                raise ValueError(f"topic_pattern is not a valid regular expression: {exc}") from exc
        return self


class DatabaseSource(_Strict):
    """The source database recomputes read from (a read replica in production)."""

    dsn: SecretStr
    pool_size: int = Field(4, ge=1, le=64)
    statement_timeout_ms: int = Field(30_000, ge=100)


class Source(_Strict):
    kafka: KafkaSource
    database: DatabaseSource


# --- resources -----------------------------------------------------------------------------------


class Trigger(_Strict):
    """A table whose changes make entities of a resource dirty, and where the entity id is.

    ``id`` is the column of the changed row holding the entity id: the row's own key for the
    resource's table, a foreign key for a related table. A key column is always read from the
    event's key. A foreign key is read from the after image, and from the before image only when
    ``replica_identity`` is ``full``: with DEFAULT, Postgres gives updates no before image and
    deletes one holding Debezium's default values, not the old ones. So a foreign-key trigger
    that must see a row move from entity A to B (or be deleted from A) needs FULL; reach-sync
    checks the table's identity against the database at startup.
    """

    table: str = Field(pattern=_TABLE.pattern, description="schema.table")
    id: Column
    replica_identity: Literal["default", "full"] = "default"
    # Fan-out: SQL mapping the ``id`` values of a batch of changes (``%(ids)s``, as text) to the
    # entity ids of the resource, in its first column; e.g. on public.members,
    # ``SELECT id FROM subscriptions WHERE member_id = ANY(%(ids)s)``. Run by the router once
    # per trigger per batch (router/lookups.py); without it, ``id`` is the entity id itself.
    lookup: str | None = Field(default=None, min_length=1)

    @field_validator("lookup")
    @classmethod
    def _lookup_takes_the_ids(cls, lookup: str | None) -> str | None:
        if lookup is not None and "%(ids)s" not in lookup:
            raise ValueError(
                "must use %(ids)s for the changed rows' ids, e.g. "
                "SELECT id FROM subscriptions WHERE member_id = ANY(%(ids)s)"
            )
        return lookup


class FieldMapping(_Strict):
    """One Reach field: which query column feeds it, how it is formatted, whether it is PII.

    ``pii``: ``none`` is ordinary data; ``send`` is sent to Reach but never appears in logs,
    traces or the audit record; ``hash`` is sent as the SHA-256 of its trimmed, lower-cased value.
    """

    column: Column
    format: Literal[
        "raw", "string", "integer", "decimal", "decimal_cents", "boolean", "datetime", "date"
    ] = "raw"
    pii: Literal["none", "send", "hash"] = "none"


class GroupRule(_Strict):
    """A cohort: a SQL boolean expression over the query's columns, evaluated at recompute."""

    name: str = Field(pattern=_REACH_NAME.pattern)
    when: str = Field(min_length=1)


class Groups(_Strict):
    """Group memberships are sent as a list of group names in one Reach field."""

    field: str = Field(pattern=_REACH_NAME.pattern)
    rules: tuple[GroupRule, ...] = Field(min_length=1)

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: tuple[GroupRule, ...]) -> tuple[GroupRule, ...]:
        names = [r.name for r in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"group names must be unique: {', '.join(duplicates)}")
        return rules


# ``every``: a whole number and a unit, nothing else ("15m", "1h", "1d"; seconds for tests).
_EVERY = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
# A schedule longer than a week would keep keys past the broker's default retention (7 days).
_EVERY_MAX_S = 7 * 86_400


def every_seconds(every: str) -> int:
    """``15m`` → 900; a ValueError for anything else (strict: no spaces, no fractions)."""
    found = _EVERY.match(every)
    if found is None:
        raise ValueError(
            f"{every!r} is not a period: write a whole number and s, m, h or d, e.g. 15m, 1h, 1d"
        )
    seconds = int(found.group(1)) * _UNIT_S[found.group(2)]
    if seconds > _EVERY_MAX_S:
        raise ValueError(f"{every!r} is longer than 7d (the dirty keys would outlive retention)")
    return seconds


class Delivery(_Strict):
    """Real time: single synchronous writes, short windows. Batch: the batch endpoint.
    Scheduled: the batch endpoint, once per tick of ``every`` or ``cron`` (docs/design.md,
    "Scheduled delivery").

    ``new: realtime`` is the onboarding guide's hybrid "real-time API for new records, batch
    API for updates": an entity Reach does not have yet (no last-sent state) goes out at once
    through the single-record endpoint, the others as ``mode`` says. ``updates`` is another
    name for ``mode``, so the hybrid reads as the guide writes it:
    ``{new: realtime, updates: batch}``.
    """

    mode: Literal["realtime", "batch", "scheduled"]
    new: Literal["realtime"] | None = None
    window_ms: int = Field(250, ge=10, le=600_000)
    max_keys: int = Field(REACH_MAX_BATCH, ge=1, le=100_000)
    # Real time: a tenant's share of one window larger than this (a burst, a backlog) goes
    # through the batch endpoint: one request and a poll or two cost less than that many single
    # writes, in Reach's capacity and in ours (bench/pipeline.py, latency at 1000 changes/s).
    batch_over: int = Field(8, ge=1, le=100_000)
    # Scheduled only, exactly one of them: a period counted from the Unix epoch (UTC), or a
    # cron expression read in ``timezone``.
    every: str | None = None
    cron: str | None = None
    timezone: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _updates_names_the_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and "updates" in data:
            if "mode" in data:
                raise ValueError("set mode or updates, not both (updates is another name for mode)")
            data = {**data, "mode": data["updates"]}
            del data["updates"]
        return data

    @field_validator("every")
    @classmethod
    def _a_period(cls, every: str | None) -> str | None:
        if every is not None:
            every_seconds(every)
        return every

    @field_validator("cron")
    @classmethod
    def _a_cron_expression(cls, cron: str | None) -> str | None:
        if cron is not None and not croniter.is_valid(cron):
            raise ValueError(f"{cron!r} is not a cron expression (minute hour day month weekday)")
        return cron

    @field_validator("timezone")
    @classmethod
    def _a_time_zone(cls, timezone: str | None) -> str | None:
        if timezone is not None:
            try:
                ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"{timezone!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)"
                ) from None
        return timezone

    @model_validator(mode="after")
    def _a_schedule_for_scheduled_alone(self) -> Self:
        timed = {k for k in ("every", "cron", "timezone") if getattr(self, k) is not None}
        if self.mode != "scheduled":
            if timed:
                raise ValueError(f"{', '.join(sorted(timed))} needs mode: scheduled")
            return self
        if (self.every is None) == (self.cron is None):
            raise ValueError("mode scheduled needs exactly one of every or cron")
        if self.every is not None and self.timezone is not None:
            raise ValueError(
                "timezone applies to cron; every counts from the Unix epoch (for a wall-clock "
                "time, write cron, e.g. '0 0 * * *' with timezone)"
            )
        if self.new == "realtime":
            # The syncer would send a new entity while the scheduler sends it too: two owners.
            raise ValueError("new: realtime cannot be combined with mode: scheduled (yet)")
        return self

    @property
    def scheduled(self) -> bool:
        return self.mode == "scheduled"

    @property
    def zone(self) -> str:
        return self.timezone or "UTC"


class Backfill(_Strict):
    """How ``reach-sync backfill`` (and a resync) walks a resource's entity ids (backfill/walk.py).

    ``ids_query`` returns the entity ids in its first column in ascending order, one page at a
    time: ``%(after)s`` is the last id of the previous page (NULL on the first) and
    ``%(limit)s`` the page size. Without it, the ids are read from the key column of the
    resource's trigger table that names the entity by its own primary key. ``since_column``
    is the query column ``--since`` compares with (an update timestamp).
    """

    ids_query: str | None = Field(default=None, min_length=1)
    since_column: Column | None = None

    @field_validator("ids_query")
    @classmethod
    def _pages(cls, ids_query: str | None) -> str | None:
        if ids_query is None:
            return None
        missing = [p for p in ("%(after)s", "%(limit)s") if p not in ids_query]
        if missing:
            raise ValueError(
                f"must use {' and '.join(missing)}, e.g. SELECT id FROM customers WHERE "
                "(%(after)s::bigint IS NULL OR id > %(after)s::bigint) ORDER BY id LIMIT %(limit)s"
            )
        return ids_query


class Resource(_Strict):
    """A Reach schema kept equal to a query over the source database."""

    reach_schema: str = Field(pattern=_REACH_NAME.pattern, description="Reach schema name")
    key: Column
    tenant: Column = Field(description="the query column holding the Reach tenant")
    triggers: tuple[Trigger, ...] = Field(min_length=1)
    query: str = Field(min_length=1)
    mapping: dict[str, FieldMapping] = Field(min_length=1)
    groups: Groups | None = None
    delivery: Delivery
    # Every tenant this resource may live in, for deleting an entity whose tenant the last-sent
    # store no longer knows (it was lost): the delete then goes to each, since deleting an id
    # a tenant does not have is a success. Without it such a delete is dead-lettered instead.
    tenants_query: str | None = None
    # The audit record (records/audit.py) carries the values of this resource's pii: none fields
    # and its groups; false keeps only field names and the payload hash. PII fields' values are
    # never audited either way.
    audit_values: bool = True
    backfill: Backfill = Backfill()

    @field_validator("query")
    @classmethod
    def _takes_the_ids(cls, query: str) -> str:
        if "%(ids)s" not in query:
            raise ValueError("must use %(ids)s for the list of ids, e.g. WHERE c.id = ANY(%(ids)s)")
        return query

    @field_validator("mapping")
    @classmethod
    def _reach_field_names(cls, mapping: dict[str, FieldMapping]) -> dict[str, FieldMapping]:
        bad = [name for name in mapping if not _REACH_NAME.match(name)]
        if bad:
            raise ValueError(f"field names must match {_REACH_NAME.pattern}: {', '.join(bad)}")
        return mapping

    @model_validator(mode="after")
    def _groups_field_is_not_mapped(self) -> Self:
        if self.groups is not None and self.groups.field in self.mapping:
            raise ValueError(f"groups.field {self.groups.field!r} is also in mapping")
        return self


# --- destination, redis, topics ------------------------------------------------------------------


class Auth(_Strict):
    """A partner-scoped HS256 JWT minted from a secret, or a static bearer key."""

    mode: Literal["jwt", "static"]
    partner_id: str | None = None
    secret: SecretStr | None = None
    token_ttl_s: int = Field(3600, ge=60, le=86_400)

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.secret is None:
            raise ValueError("needs secret_env or secret_file")
        if self.mode == "jwt" and not self.partner_id:
            raise ValueError("mode jwt needs partner_id")
        return self


_Rate = Annotated[float, Field(gt=0, le=100_000, allow_inf_nan=False, description="requests/s")]
_Burst = Annotated[int, Field(ge=1, le=100_000, description="requests at once")]


class RateLimit(_Strict):
    """Token buckets for requests to Reach (docs/reach-api.md §7 Q11); an unset rate is unlimited.

    Reach publishes no numbers, so they are the partner's to set. ``requests_per_s`` is one
    process's (one credential's) rate; ``group_requests_per_s`` is the whole consumer group's,
    split between its live processes through Redis so that N processes do not send N times it.
    A burst is how many requests may go at once above the pace (1: evenly paced).
    """

    requests_per_s: _Rate | None = None
    burst: _Burst | None = None  # default 1
    per_tenant_requests_per_s: _Rate | None = None
    per_tenant_burst: _Burst | None = None  # default 1
    group_requests_per_s: _Rate | None = None

    @model_validator(mode="after")
    def _meaningful(self) -> Self:
        rates = (self.requests_per_s, self.per_tenant_requests_per_s, self.group_requests_per_s)
        if all(rate is None for rate in rates):
            raise ValueError(
                "sets no limit: set requests_per_s, per_tenant_requests_per_s or "
                "group_requests_per_s, or remove rate_limit"
            )
        no_process_rate = self.requests_per_s is None and self.group_requests_per_s is None
        if self.burst is not None and no_process_rate:
            raise ValueError("burst needs requests_per_s or group_requests_per_s")
        if self.per_tenant_burst is not None and self.per_tenant_requests_per_s is None:
            raise ValueError("per_tenant_burst needs per_tenant_requests_per_s")
        return self


class CircuitBreaker(_Strict):
    """When every request to Reach failed for ``open_after_s`` (connection refused, timeouts,
    5xx), stop sending: requests fail at once, and one probe request goes every
    ``probe_interval_s`` until Reach answers again (consumer/reach/breaker.py)."""

    # Long enough that a deploy or a short blip of Reach is ridden out by retries alone.
    open_after_s: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    probe_interval_s: float = Field(default=10.0, gt=0, le=600, allow_inf_nan=False)


class TenantProbe(_Strict):
    """How often a tenant Reach refuses (401/403) is tried again: one request after
    ``interval_s``, then twice as long after each refusal, up to ``max_interval_s``."""

    interval_s: float = Field(default=30.0, gt=0, le=3600, allow_inf_nan=False)
    max_interval_s: float = Field(default=600.0, gt=0, le=86_400, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_interval_s < self.interval_s:
            raise ValueError("max_interval_s must be at least interval_s")
        return self


class Destination(_Strict):
    """The Reach API: where, as whom, and its limits."""

    base_url: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$")
    auth: Auth
    # What goes in reach-tenant-id: the tenant's external id (the partner's business id, as
    # Reach's onboarding samples send it) or Reach's own tenant id (docs/reach-api.md §2.2, §7 Q3).
    tenant_id_mode: Literal["external_id", "id"] = "external_id"
    batch_size: int = Field(REACH_MAX_BATCH, ge=1, le=REACH_MAX_BATCH)
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=10_000, le=50_000_000)
    timeout_s: float = Field(30.0, gt=0, le=600)
    # Requests in flight to Reach at once, per process (one keep-alive connection each).
    max_connections: int = Field(32, ge=1, le=1000)
    # Seconds a record may wait for a missing $ref target on Reach (docs/reach-api.md §7.9).
    dependency_wait_timeout_s: int = Field(3600, ge=0, le=86_400)
    # Client-side rate limits; without them only Reach's 429s (and Retry-After) slow sends.
    rate_limit: RateLimit | None = None
    # When Reach as a whole fails, and when it refuses one tenant (README, "When Reach refuses").
    circuit_breaker: CircuitBreaker = CircuitBreaker()
    tenant_probe: TenantProbe = TenantProbe()


class RedisSettings(_Strict):
    url: SecretStr
    key_prefix: str = Field("reach-sync", min_length=1, pattern=r"^[A-Za-z0-9:._-]+$")


_TOPIC = r"^[A-Za-z0-9._-]+$"


class Topics(_Strict):
    """Topics reach-sync writes. ``audit`` (the record of every send and delete) defaults to the
    dirty topic's name with its ``.dirty`` suffix replaced by ``.audit`` (``<dirty>.audit`` when
    it has none); set it explicitly, since changing it later starts a new history. ``scheduled``
    (the dirty keys of ``mode: scheduled`` resources, waiting for their run) defaults the same
    way, to ``.scheduled``; it has ``dirty_partitions`` partitions too."""

    dirty: str = Field(pattern=_TOPIC)
    dirty_partitions: int = Field(12, ge=1, le=1024)
    dead_letter: str = Field(pattern=_TOPIC)
    audit: str = Field(pattern=_TOPIC)
    scheduled: str = Field(pattern=_TOPIC)

    @model_validator(mode="before")
    @classmethod
    def _default_audit(cls, data: Any) -> Any:
        dirty = data.get("dirty") if isinstance(data, dict) else None
        if not isinstance(dirty, str):
            return data
        base = dirty.removesuffix(".dirty")
        for name in ("audit", "scheduled"):
            if data.get(name) is None:
                data = {**data, name: f"{base}.{name}"}
        return data

    @model_validator(mode="after")
    def _audit_is_its_own_topic(self) -> Self:
        if self.audit in (self.dirty, self.dead_letter):
            raise ValueError("audit must be a topic of its own, not the dirty or dead-letter topic")
        if self.scheduled in (self.dirty, self.dead_letter, self.audit):
            raise ValueError(
                "scheduled must be a topic of its own, not the dirty, dead-letter or audit topic"
            )
        return self


class HealthSettings(_Strict):
    """``/healthz`` and ``/readyz`` (observe/health.py) on ``host:port``; ``port: 0`` takes a
    free port (logged at startup). ``stall_after_s``: lag with no progress for this long makes
    the process not ready."""

    port: int = Field(ge=0, le=65_535)
    # Loopback by default; a probe from outside the host (a Kubernetes kubelet) needs 0.0.0.0.
    host: str = Field("127.0.0.1", min_length=1)
    stall_after_s: float = Field(60.0, gt=0, le=86_400, allow_inf_nan=False)


class InFlightBounds(_Strict):
    """Process-wide bounds on the work a syncer holds (syncer/in_flight.py): dirty keys read
    and not yet done (open, running, failed and held windows' entities, across the process's
    partitions) and the memory their windows take (estimated per entity and per cause kept:
    windows.py). When either is reached every partition is paused; they resume once both are
    below ``resume_below`` of their bound. Per partition, a backlog window is bounded as well (a
    few windows' worth), so these matter with many partitions, a slow Reach, or tenants refused
    for long."""

    max_records: int = Field(default=20_000, ge=100, le=10_000_000)
    max_bytes: int = Field(default=48 * 1024 * 1024, ge=64 * 1024, le=8 * 1024**3)
    resume_below: float = Field(default=0.5, gt=0, lt=1, allow_inf_nan=False)


class SyncDefinition(_Strict):
    """The whole sync definition."""

    version: Literal[1] = 1
    source: Source
    resources: dict[str, Resource] = Field(min_length=1)
    destination: Destination
    redis: RedisSettings
    topics: Topics
    # Without it, no health endpoints are served.
    health: HealthSettings | None = None
    in_flight: InFlightBounds = InFlightBounds()
    # What ``run`` does when a resource's definition changed since its records were sent
    # (backfill/fingerprint.py): ``auto`` re-syncs exactly the changed resources, ``manual``
    # only says which changed, for ``reach-sync resync``.
    resync: Literal["auto", "manual"] = "auto"

    @field_validator("resources")
    @classmethod
    def _resource_names(cls, resources: dict[str, Resource]) -> dict[str, Resource]:
        bad = [name for name in resources if not _REACH_NAME.match(name)]
        if bad:
            raise ValueError(f"resource names must match {_REACH_NAME.pattern}: {', '.join(bad)}")
        return resources

    def trigger_tables(self) -> set[str]:
        return {t.table for r in self.resources.values() for t in r.triggers}

    def scheduled_resources(self) -> list[str]:
        """The resources sent at scheduled runs (``delivery.mode: scheduled``), in order."""
        return [name for name, r in self.resources.items() if r.delivery.scheduled]

    def dirty_topic_of(self, resource: str) -> str:
        """Where a dirty key of ``resource`` goes: the scheduled topic for a scheduled resource,
        else the dirty topic. The router, backfill and ``dlq replay`` all ask here, so an entity
        has one topic and so one owner (docs/design.md, "Scheduled delivery")."""
        found = self.resources.get(resource)
        if found is not None and found.delivery.scheduled:
            return self.topics.scheduled
        return self.topics.dirty
