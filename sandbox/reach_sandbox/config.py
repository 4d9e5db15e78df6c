"""Sandbox configuration: who may call it, what it knows, and every §7 behaviour switch.

The model is frozen and strict with extra keys forbidden, so a typo in a test's config fails the
start-up with the field's path instead of silently running a different sandbox. Every switch
defaults to the behaviour docs/reach-api.md §7 prescribes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from reach_sandbox.fault_specs import FaultSpec

__all__ = [
    "DEV_PARTNER_ID",
    "AuthConfig",
    "BatchConfig",
    "BatchOrderConfig",
    "ConfigError",
    "LimitsConfig",
    "PartnerConfig",
    "RateLimitConfig",
    "RateLimitsConfig",
    "SandboxConfig",
    "SchemaConfig",
    "TenantConfig",
    "ValidationConfig",
    "config_to_data",
    "dev_config",
    "load_sandbox_config",
    "parse_sandbox_config",
    "write_sandbox_config",
]

DEV_PARTNER_ID = "reach-sync-dev"
# docs/reach-api.md §1: at most 1000 resources per batch upload or patch; §7 Q8 applies it to
# deletes.
_REACH_BATCH_LIMIT = 1000
# docs/reach-api.md §7 Q17: the sandbox's default request body cap.
_DEFAULT_BODY_CAP = 5 * 1024 * 1024
# docs/reach-api.md §3.1: dependencyWaitTimeout accepts 0 to 86400 seconds.
_MAX_DEPENDENCY_WAIT_S = 86400
_NAME_PATTERN = r"^[a-zA-Z0-9_-]+$"

SchemaCategory = Literal[
    "contacts_schema", "transactions_schema", "locations_schema", "custom_schema"
]


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the source, field and reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class PartnerConfig(_Strict):
    """A Reach partner: the HS256 secret its JWTs are signed with, and any static keys it holds."""

    partner_id: str = Field(min_length=1)
    secret: SecretStr
    static_keys: tuple[SecretStr, ...] = ()


class TenantConfig(_Strict):
    """A tenant that exists from start-up; ``id`` is Reach's id, ``external_id`` the partner's."""

    id: str = Field(min_length=1)
    external_id: str = Field(min_length=1)
    partner_id: str = DEV_PARTNER_ID
    name: str | None = None


class SchemaConfig(_Strict):
    """A schema definition beyond the seeded defaults (or replacing one of the same name)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    name: str = Field(pattern=_NAME_PATTERN)
    plural_name: str | None = Field(default=None, pattern=_NAME_PATTERN)
    description: str = Field(default="configured schema", min_length=1)
    category: SchemaCategory = "custom_schema"
    external_id_field: str = Field(min_length=1)
    json_schema: dict[str, Any] = Field(alias="schema")
    # None: every configured partner gets this schema.
    partners: tuple[str, ...] | None = None


class AuthConfig(_Strict):
    """Auth switches; defaults follow docs/reach-api.md §7 Q1-Q3."""

    jwt_leeway_seconds: float = Field(default=0.0, ge=0.0)
    # §7 Q2: X-Tenant-Id only behind a flag, so client mistakes show up.
    accept_x_tenant_id: bool = False
    # §7 Q3: the tenant header may carry Reach's id or the partner's external id.
    tenant_header_value: Literal["either", "id", "external_id"] = "either"
    # §2.1: tenant-scoped JWTs (tenantExternalId claim, no header) on /api/*.
    accept_tenant_tokens: bool = True


class LimitsConfig(_Strict):
    """Request limits; a request over one is refused synchronously (400, or 413 for the body)."""

    max_batch_records: int = Field(default=_REACH_BATCH_LIMIT, ge=1)
    max_delete_ids: int = Field(default=_REACH_BATCH_LIMIT, ge=1)
    max_body_bytes: int = Field(default=_DEFAULT_BODY_CAP, ge=1024)
    max_dependency_wait_seconds: int = Field(default=_MAX_DEPENDENCY_WAIT_S, ge=0)
    default_page_size: int = Field(default=20, ge=1)
    max_page_size: int = Field(default=100, ge=1)


class RateLimitConfig(_Strict):
    """A token bucket: ``rate_per_second`` refill, at most ``burst`` requests at once."""

    rate_per_second: float = Field(gt=0.0)
    burst: int = Field(ge=1)


class RateLimitsConfig(_Strict):
    """Buckets per credential (the bearer token) and per tenant; None means unlimited."""

    per_token: RateLimitConfig | None = None
    per_tenant: RateLimitConfig | None = None


class BatchOrderConfig(_Strict):
    """The order a tenant's queued batches apply in: arrival order (§7 Q16), or shuffled.

    Reach documents no order across batches (§3.2), so ``shuffle`` lets a test meet what arrival
    order hides: a client with two unfinished batches of one entity, applied either way round.
    Also the body of ``PUT /_admin/batch-order``.
    """

    shuffle: bool = False
    # None: the top-level random_seed if set, else a fresh one (GET /_admin/batch-order shows
    # which), so a failing run can be replayed.
    seed: int | None = None
    # With shuffle, each pick waits until the oldest queued batch has waited this long: batches
    # sent within it are queued together, and each of two such batches goes first half the time.
    gather_seconds: float = Field(default=0.25, ge=0.0, le=5.0)


class BatchConfig(_Strict):
    """Asynchronous batch processing."""

    processing_delay_seconds: float = Field(default=0.0, ge=0.0)
    # How often pending records are checked for expiry; bounds how late an expiry is reported.
    pending_sweep_interval_seconds: float = Field(default=0.1, gt=0.0, le=60.0)
    # §7 Q12: Idempotency-Key is not documented, so it is honoured only when switched on.
    idempotency_keys: bool = False
    order: BatchOrderConfig = BatchOrderConfig()


class ValidationConfig(_Strict):
    """§7 Q6: schema and shape validation synchronous (400) or per record in the batch status."""

    mode: Literal["sync", "async"] = "sync"
    assert_formats: bool = True


class SandboxConfig(_Strict):
    """Everything the sandbox needs besides its state directory."""

    admin_token: SecretStr
    partners: tuple[PartnerConfig, ...] = Field(min_length=1)
    tenants: tuple[TenantConfig, ...] = ()
    seed_default_schemas: bool = True
    schemas: tuple[SchemaConfig, ...] = ()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    batches: BatchConfig = BatchConfig()
    validation: ValidationConfig = ValidationConfig()
    faults: tuple[FaultSpec, ...] = ()
    # Seeds the draws of probabilistic faults, for reproducible fault runs.
    random_seed: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SandboxConfig:
        partner_ids = [p.partner_id for p in self.partners]
        _unique(partner_ids, "partners", "partner_id")
        keys = [k.get_secret_value() for p in self.partners for k in p.static_keys]
        _unique(keys, "partners", "static key")
        _unique([t.id for t in self.tenants], "tenants", "id")
        _unique([(t.partner_id, t.external_id) for t in self.tenants], "tenants", "external_id")
        known = set(partner_ids)
        for tenant in self.tenants:
            if tenant.partner_id not in known:
                raise ValueError(f"tenant {tenant.id!r}: unknown partner_id {tenant.partner_id!r}")
        for schema in self.schemas:
            for partner in schema.partners or ():
                if partner not in known:
                    raise ValueError(f"schema {schema.name!r}: unknown partner {partner!r}")
        names = [(s.name.lower(), p) for s in self.schemas for p in (s.partners or partner_ids)]
        _unique(names, "schemas", "name (case-insensitive, per partner)")
        if self.limits.default_page_size > self.limits.max_page_size:
            raise ValueError("limits.default_page_size exceeds limits.max_page_size")
        return self


def _unique(values: list[Any], where: str, what: str) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            shown = "(hidden)" if what == "static key" else repr(value)
            raise ValueError(f"{where}: duplicate {what} {shown}")
        seen.add(value)


def parse_sandbox_config(data: Any, source: str = "<config>") -> SandboxConfig:
    """Validate plain data (as read from YAML or JSON) into a config, or raise ``ConfigError``.

    Goes through JSON so strict mode accepts YAML lists for tuples and strings for secrets.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        raw = orjson.dumps(data)
    except TypeError as exc:
        raise ConfigError(f"{source}: not plain data ({exc})") from exc
    try:
        return SandboxConfig.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {path}: {first['msg']}{more}") from exc


def load_sandbox_config(path: Path | str) -> SandboxConfig:
    """Read a YAML config file; every failure is a ``ConfigError`` naming the file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({_one_line(str(exc))})") from exc
    return parse_sandbox_config(data, source)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def config_to_data(config: SandboxConfig) -> dict[str, Any]:
    """Plain data with secrets revealed: what ``write_sandbox_config`` puts in a file."""
    data = config.model_dump(mode="python", by_alias=True, exclude_defaults=False)
    revealed: dict[str, Any] = _reveal(data)
    return revealed


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(v) for v in value]
    return value


def write_sandbox_config(config: SandboxConfig, path: Path) -> None:
    """Write a config as YAML, readable by ``load_sandbox_config`` (secrets in clear: chmod 600)."""
    text = yaml.safe_dump(config_to_data(config), sort_keys=False)
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)


def dev_config(
    partner_secret: str,
    admin_token: str,
    static_key: str | None,
    tenants: list[tuple[str, str]],
) -> SandboxConfig:
    """The local stack's sandbox: one partner, ``reach-sync-dev``, owning the given tenants.

    ``tenants`` are (Reach tenant id, partner external id) pairs.
    """
    return parse_sandbox_config(
        {
            "admin_token": admin_token,
            "partners": [
                {
                    "partner_id": DEV_PARTNER_ID,
                    "secret": partner_secret,
                    "static_keys": [static_key] if static_key else [],
                }
            ],
            "tenants": [
                {"id": tid, "external_id": ext, "partner_id": DEV_PARTNER_ID, "name": ext}
                for tid, ext in tenants
            ],
        },
        "dev_config",
    )
