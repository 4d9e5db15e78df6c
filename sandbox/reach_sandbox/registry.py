"""Tenants and schema definitions: persisted in SQLite, served from memory.

Every request resolves a tenant and most resolve a schema, so both live in dictionaries that the
event loop reads without a database round trip. They change only through the partner routes and
the seeding at start-up, which write SQLite first and then replace the in-memory entry; entries
are immutable, so the database thread may read them at any time.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from reach_sandbox.config import SandboxConfig
from reach_sandbox.defaults import DEFAULT_SCHEMAS
from reach_sandbox.validation import RecordValidator, SchemaError

__all__ = [
    "Registry",
    "SchemaDef",
    "Tenant",
    "load_registry",
    "save_schema",
    "save_tenant",
    "seed_schemas",
]

_ID_NAMESPACE = uuid.UUID("0f3a9c52-1b7e-4d6a-8c2f-6e4b1a9d7c35")

TenantHeaderMode = Literal["either", "id", "external_id"]


@dataclass(frozen=True, slots=True)
class Tenant:
    """A business of a partner; ``doc`` holds the tenant fields of docs/reach-api.md §3.7."""

    id: str
    partner_id: str
    external_id: str
    doc: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class SchemaDef:
    """A schema definition with its compiled validator and resolved ``$ref`` targets."""

    id: str
    partner_id: str
    doc: dict[str, Any]
    version: int
    created_at: float
    updated_at: float
    validator: RecordValidator
    # field name -> id of the schema its ``$ref`` points at
    refs: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        name: str = self.doc["name"]
        return name

    @property
    def external_id_field(self) -> str:
        return self.validator.external_id_field


class Registry:
    """Lookups by id, external id and case-insensitive name, scoped by partner."""

    def __init__(self, assert_formats: bool) -> None:
        self.assert_formats = assert_formats
        self.tenants: dict[str, Tenant] = {}
        self._tenant_ext: dict[tuple[str, str], Tenant] = {}
        self.schemas: dict[str, SchemaDef] = {}
        self._schema_names: dict[tuple[str, str], SchemaDef] = {}

    def clear(self) -> None:
        self.tenants.clear()
        self._tenant_ext.clear()
        self.schemas.clear()
        self._schema_names.clear()

    def put_tenant(self, tenant: Tenant) -> None:
        old = self.tenants.get(tenant.id)
        if old is not None:
            self._tenant_ext.pop((old.partner_id, old.external_id), None)
        self.tenants[tenant.id] = tenant
        self._tenant_ext[(tenant.partner_id, tenant.external_id)] = tenant

    def tenant_for(self, partner_id: str, value: str, mode: TenantHeaderMode) -> Tenant | None:
        """The partner's tenant named by a header value (Reach id or external id, per ``mode``)."""
        if mode != "external_id":
            by_id = self.tenants.get(value)
            if by_id is not None and by_id.partner_id == partner_id:
                return by_id
        if mode != "id":
            return self._tenant_ext.get((partner_id, value))
        return None

    def find_tenant(self, value: str) -> Tenant | None:
        """Any partner's tenant by Reach id, else the first with that external id (admin use)."""
        if value in self.tenants:
            return self.tenants[value]
        return next((t for t in self.tenants.values() if t.external_id == value), None)

    def tenants_of(self, partner_id: str) -> list[Tenant]:
        return sorted(
            (t for t in self.tenants.values() if t.partner_id == partner_id),
            key=lambda t: (t.created_at, t.id),
        )

    def put_schema(self, schema: SchemaDef) -> None:
        self.schemas[schema.id] = schema
        self._schema_names[(schema.partner_id, schema.name.lower())] = schema

    def schema(self, partner_id: str, name_or_id: str) -> SchemaDef | None:
        """A partner's schema by case-insensitive name or by id (docs/reach-api.md §3)."""
        found = self._schema_names.get((partner_id, name_or_id.lower()))
        if found is None:
            by_id = self.schemas.get(name_or_id)
            if by_id is not None and by_id.partner_id == partner_id:
                found = by_id
        return found

    def schemas_of(self, partner_id: str) -> list[SchemaDef]:
        return sorted(
            (s for s in self.schemas.values() if s.partner_id == partner_id),
            key=lambda s: (s.created_at, s.name),
        )

    def build_schema(
        self,
        partner_id: str,
        schema_id: str,
        doc: dict[str, Any],
        version: int,
        created_at: float,
        updated_at: float,
    ) -> SchemaDef:
        """Compile a definition; raises ``SchemaError`` when it cannot be enforced."""
        validator = RecordValidator(doc["schema"], doc["externalIdField"], self.assert_formats)
        refs: dict[str, str] = {}
        for prop, target in validator.ref_targets.items():
            if target == doc["name"].lower() or target == schema_id:
                refs[prop] = schema_id
                continue
            resolved = self.schema(partner_id, target)
            if resolved is None:
                raise SchemaError(
                    f"schema.properties.{prop}.$ref: schema {target!r} does not exist yet"
                )
            refs[prop] = resolved.id
        return SchemaDef(
            schema_id, partner_id, doc, version, created_at, updated_at, validator, refs
        )


def schema_doc(raw: dict[str, Any]) -> dict[str, Any]:
    """The stored form of a definition from config or defaults (snake_case names)."""
    name = raw["name"]
    return {
        "name": name,
        "pluralName": raw.get("plural_name") or name,
        "description": raw.get("description") or name,
        "category": raw["category"],
        "externalIdField": raw["external_id_field"],
        "schema": raw["schema"],
        "fieldsToExpose": raw.get("fieldsToExpose", []),
        "exposeNameJsonPath": raw.get("exposeNameJsonPath"),
    }


def seeded_schema_id(partner_id: str, name: str) -> str:
    """Seeded schemas get ids stable across restarts and state directories."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"schema:{partner_id}:{name.lower()}"))


def save_tenant(conn: sqlite3.Connection, tenant: Tenant) -> None:
    conn.execute(
        "INSERT INTO tenants (id, partner_id, external_id, doc, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "external_id = excluded.external_id, doc = excluded.doc, updated_at = excluded.updated_at",
        (
            tenant.id,
            tenant.partner_id,
            tenant.external_id,
            orjson.dumps(tenant.doc),
            tenant.created_at,
            tenant.updated_at,
        ),
    )


def save_schema(conn: sqlite3.Connection, schema: SchemaDef) -> None:
    conn.execute(
        "INSERT INTO schemas (id, partner_id, name_lower, doc, version, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, "
        "version = excluded.version, updated_at = excluded.updated_at",
        (
            schema.id,
            schema.partner_id,
            schema.name.lower(),
            orjson.dumps(schema.doc),
            schema.version,
            schema.created_at,
            schema.updated_at,
        ),
    )


def load_registry(conn: sqlite3.Connection, registry: Registry, config: SandboxConfig) -> None:
    """Fill the registry from the database, seeding what the config adds that is not there yet.

    Persisted state wins over the config for things that exist: a schema changed through the API
    stays changed across restarts. Runs on the database thread, in one transaction.
    """
    registry.clear()
    now = time.time()
    for row in conn.execute(
        "SELECT id, partner_id, external_id, doc, created_at, updated_at FROM tenants"
    ):
        registry.put_tenant(Tenant(row[0], row[1], row[2], orjson.loads(row[3]), row[4], row[5]))
    rows = conn.execute(
        "SELECT id, partner_id, doc, version, created_at, updated_at FROM schemas "
        "ORDER BY created_at"
    ).fetchall()
    for row in _ref_order([(r, orjson.loads(r[2])) for r in rows]):
        (sid, partner, _doc, version, created, updated), doc = row
        registry.put_schema(registry.build_schema(partner, sid, doc, version, created, updated))
    for tenant_cfg in config.tenants:
        if tenant_cfg.id not in registry.tenants:
            doc = {
                "name": tenant_cfg.name or tenant_cfg.external_id,
                "website": None,
                "locations": [],
                "branding": None,
            }
            tenant = Tenant(
                tenant_cfg.id, tenant_cfg.partner_id, tenant_cfg.external_id, doc, now, now
            )
            save_tenant(conn, tenant)
            registry.put_tenant(tenant)
    seed_schemas(registry, config, now, lambda schema: save_schema(conn, schema))


def seed_schemas(
    registry: Registry,
    config: SandboxConfig,
    now: float,
    save: Callable[[SchemaDef], None] | None = None,
) -> None:
    """Register the default and configured schemas each partner lacks, defaults first.

    Also the start-up check of a config: run on an empty registry, it raises ``SchemaError``
    (naming the schema and the JSON path) for a schema the sandbox could not enforce.
    """
    partner_ids = [p.partner_id for p in config.partners]
    configured = {s.name.lower(): s.model_dump(mode="json", by_alias=True) for s in config.schemas}
    seeds: list[dict[str, Any]] = []
    if config.seed_default_schemas:
        # A configured schema replacing a default takes the default's place in the order.
        seeds.extend(configured.pop(d["name"], d) for d in DEFAULT_SCHEMAS)
    seeds.extend(configured.values())
    for raw in seeds:
        for partner in raw.get("partners") or partner_ids:
            if registry.schema(partner, raw["name"]) is not None:
                continue
            sid = seeded_schema_id(partner, raw["name"])
            try:
                schema = registry.build_schema(partner, sid, schema_doc(raw), 1, now, now)
            except SchemaError as exc:
                raise SchemaError(f"schemas.{raw['name']}: {exc}") from exc
            if save is not None:
                save(schema)
            registry.put_schema(schema)


def _ref_order(
    rows: list[tuple[tuple[Any, ...], dict[str, Any]]],
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Order stored schemas so every ``$ref`` target is registered before its referrers."""
    ordered: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    done: set[tuple[str, str]] = set()
    remaining = list(rows)
    while remaining:
        progress = False
        for item in list(remaining):
            (sid, partner, *_), doc = item
            targets = {
                str(p["$ref"]).split("/", 1)[-1].lower()
                for p in doc["schema"].get("properties", {}).values()
                if isinstance(p, dict) and "$ref" in p
            }
            names = {(partner, t) for t in targets} - {
                (partner, doc["name"].lower()),
                (partner, sid),
            }
            if names <= done:
                ordered.append(item)
                done.update({(partner, doc["name"].lower()), (partner, sid)})
                remaining.remove(item)
                progress = True
        if not progress:  # a dangling reference: let build_schema report it
            ordered.extend(remaining)
            break
    return ordered
