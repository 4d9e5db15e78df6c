"""The guide's "Database access" method: Reach polls read-only views instead of receiving records.

Per resource and tenant, a view ``<schema>.<resource>__<tenant>`` holds what the API would send
for every entity of that tenant: the resource query over all its entity ids (the backfill's id
source, consumer/backfill/walk.py), with its group rules evaluated as recompute.py does, projected
by formats.py. A LOGIN role may use the schema and select those views, nothing else: the views
belong to the user who applies them and read the base tables with that user's rights, so the
role needs no grant on a base table (``security_barrier`` keeps its own predicates from running
before the views' filters).

Applying is one transaction: the checks, the role, then every view of the role dropped and
created again (CREATE OR REPLACE VIEW cannot drop or retype a column). A refusal or a failure
leaves everything as it was. The definition's SQL is trusted as recompute.py trusts it: it is
configuration, written into the views as it is.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from consumer.access.formats import ColumnType, field_expression, groups_expression
from consumer.backfill.walk import ids_query
from consumer.config import Resource, SyncDefinition
from consumer.errors import ConfigurationError, Retryable
from consumer.sink.projection import GROUP_COLUMN_PREFIX
from consumer.sink.recompute import recompute_query

__all__ = [
    "DEFAULT_ROLE",
    "DEFAULT_SCHEMA",
    "AccessOptions",
    "AccessPlan",
    "Dropped",
    "View",
    "apply_access",
    "bind",
    "check_name",
    "connect",
    "drop_access",
    "plan_access",
    "script",
    "slug",
    "view_name",
]

DEFAULT_SCHEMA = "reach_access"
DEFAULT_ROLE = "reach_reader"
CONNECT_TIMEOUT_S = 10
# Postgres cuts a longer name to this many bytes (NAMEDATALEN - 1): two views could become one.
MAX_NAME = 63
# Every view's comment starts with this: how apply and drop tell the role's views from others.
MARKER = "reach-sync db-access for role "
# One apply or drop at a time per cluster, so two never interleave their checks and DDL.
_LOCK = sql.SQL("SELECT pg_advisory_xact_lock(hashtext('reach-sync db-access'))")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_NOT_SLUG = re.compile(r"[^a-z0-9_]+")
# psycopg's placeholders: %(name)s, %s, and %% for a literal %.
_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[^)]*)\))?(?P<kind>.?)", re.DOTALL)
_ROLE_ATTRIBUTES = (
    ("rolsuper", "SUPERUSER"),
    ("rolcreatedb", "CREATEDB"),
    ("rolcreaterole", "CREATEROLE"),
    ("rolbypassrls", "BYPASSRLS"),
    ("rolreplication", "REPLICATION"),
)
_KINDS = {
    "r": "a table",
    "p": "a partitioned table",
    "v": "a view",
    "m": "a materialized view",
    "S": "a sequence",
    "f": "a foreign table",
    "c": "a composite type",
    "i": "an index",
}


@dataclass(frozen=True, slots=True)
class AccessOptions:
    """Where the views go, who reads them, for which tenants (none: each tenants_query)."""

    schema: str = DEFAULT_SCHEMA
    role: str = DEFAULT_ROLE
    tenants: tuple[str, ...] = ()
    connection_limit: int | None = None


@dataclass(frozen=True, slots=True)
class View:
    """One view: whose entities, its name in the schema, its SELECT."""

    resource: str
    tenant: str
    name: str
    select: str

    def comment(self, role: str) -> str:
        return f"{MARKER}{role}: resource {self.resource}, tenant {self.tenant}"


@dataclass(frozen=True, slots=True)
class AccessPlan:
    """What apply does now: the views, the role's state, the views of the role to replace, and
    the fields whose view column is not exactly what the API sends (with how it differs)."""

    options: AccessOptions
    views: tuple[View, ...]
    role_exists: bool
    replaced: tuple[str, ...]
    notes: tuple[str, ...]

    def statements(self, password: sql.Composable) -> list[sql.Composed]:
        """The DDL, in order; ``password``: the role's password as SQL (its verifier)."""
        o = self.options
        schema, role = sql.Identifier(o.schema), sql.Identifier(o.role)
        out: list[sql.Composed] = [
            _q("CREATE SCHEMA IF NOT EXISTS {s}", s=schema),
            _q("REVOKE ALL ON SCHEMA {s} FROM PUBLIC", s=schema),
        ]
        if self.role_exists:
            out.append(_q("ALTER ROLE {r} WITH LOGIN PASSWORD {p}", r=role, p=password))
        else:
            out.append(
                _q(
                    "CREATE ROLE {r} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT "
                    "NOREPLICATION NOBYPASSRLS PASSWORD {p}",
                    r=role,
                    p=password,
                )
            )
        if o.connection_limit is not None:
            limit = sql.Literal(o.connection_limit)
            out.append(_q("ALTER ROLE {r} WITH CONNECTION LIMIT {n}", r=role, n=limit))
        out.append(_q("GRANT USAGE ON SCHEMA {s} TO {r}", s=schema, r=role))
        out += [_q("DROP VIEW {v}", v=sql.Identifier(o.schema, n)) for n in self.replaced]
        for view in self.views:
            name = sql.Identifier(o.schema, view.name)
            out += [
                _q(
                    "CREATE VIEW {v} WITH (security_barrier) AS\n{select}",
                    v=name,
                    select=sql.SQL(view.select),
                ),
                _q("COMMENT ON VIEW {v} IS {c}", v=name, c=sql.Literal(view.comment(o.role))),
                _q("REVOKE ALL ON {v} FROM PUBLIC", v=name),
                _q("GRANT SELECT ON {v} TO {r}", v=name, r=role),
            ]
        return out


@dataclass(frozen=True, slots=True)
class Dropped:
    """What drop did, statement by statement, and what it kept and why."""

    statements: tuple[str, ...]
    kept: tuple[str, ...]


def _q(template: str, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(template).format(**parts)


def slug(text: str) -> str:
    """``text`` as a name part: lower-case, every run of other characters than a-z, 0-9 and _
    one _. Two tenants can give one slug (Merchant-1, merchant_1): plan_access refuses that,
    naming both, rather than give a view a name that depends on the other tenants."""
    return _NOT_SLUG.sub("_", text.lower())


def view_name(resource: str, tenant: str) -> str:
    return f"{slug(resource)}__{slug(tenant)}"


def check_name(kind: str, name: str) -> str:
    """A schema or role name as db-access takes it: unquoted SQL (lower-case), so that whoever
    writes it in Reach's settings or psql need not quote it."""
    if not _NAME.match(name) or len(name) > MAX_NAME:
        raise ValueError(
            f"{kind} {name!r} must be lower-case letters, digits and _, not starting with a "
            f"digit, at most {MAX_NAME} characters"
        )
    if kind == "schema" and (name in ("public", "information_schema") or name.startswith("pg_")):
        raise ValueError(f"schema {name!r} is not one of its own: give db-access a new schema")
    return name


def bind(text: str, values: Mapping[str, str], what: str) -> str:
    """``text`` as psycopg runs it with parameters, each ``%(name)s`` in ``values`` replaced by
    SQL (not quoted as a value) and ``%%`` by ``%``: a view has no parameters."""

    def replace(match: re.Match[str]) -> str:
        name, kind = match["name"], match["kind"]
        if name is None and kind == "%":
            return "%"
        if name is not None and kind == "s" and name in values:
            return values[name]
        known = ", ".join(f"%({n})s" for n in values) or "none"
        raise ConfigurationError(
            f"{what}: {match.group()!r} is no placeholder a view can fill (it fills {known}; "
            "a literal % is written %%)"
        )

    return _PLACEHOLDER.sub(replace, text)


async def connect(dsn: str, statement_timeout_ms: int) -> psycopg.AsyncConnection[Any]:
    """The applying connection; each command makes its one transaction on it."""
    try:
        return await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            options=f"-c statement_timeout={statement_timeout_ms}",
        )
    except psycopg.OperationalError as exc:
        raise Retryable(f"the database is unavailable: {exc}") from exc


@asynccontextmanager
async def _classified(what: str) -> AsyncIterator[None]:
    """psycopg's errors as ours: the database unreachable may pass (1), the rest is a person's
    to fix (2), with the database's message."""
    try:
        yield
    except psycopg.errors.ReadOnlySqlTransaction as exc:
        raise ConfigurationError(
            f"{what}: the database is read-only (a replica?): give the primary's DSN with "
            f"--dsn-env ({exc})"
        ) from exc
    except psycopg.OperationalError as exc:
        if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
            raise ConfigurationError(f"{what}: {exc}") from exc
        raise Retryable(f"{what}: the database is unavailable: {exc}") from exc
    except psycopg.Error as exc:
        raise ConfigurationError(f"{what}: {str(exc).strip()}") from exc


async def _rows(
    conn: psycopg.AsyncConnection[Any], query: Any, params: Any, what: str
) -> list[tuple[Any, ...]]:
    async with _classified(what):
        cursor = await conn.execute(query, params)
        return await cursor.fetchall() if cursor.description is not None else []


# --- planning ------------------------------------------------------------------------------------


async def plan_access(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition, options: AccessOptions
) -> AccessPlan:
    """What apply would do now, reading the database (nothing is written); ConfigurationError
    naming what it would refuse."""
    check_name("schema", options.schema)
    check_name("role", options.role)
    collation = await _lower_collation(conn)
    views: list[View] = []
    notes: list[str] = []
    for name, resource in definition.resources.items():
        tenants = await _tenants(conn, name, resource, options.tenants)
        inner = await _inner_query(conn, name, resource)
        types = await _column_types(conn, name, inner)
        columns, resource_notes = _projection(name, resource, types, collation)
        notes += resource_notes
        for tenant in tenants:
            select = _q(
                "SELECT {columns}\n  FROM ({inner}) AS q\n WHERE q.{key} IS NOT NULL "
                "AND q.{tenant}::text = {value}",
                columns=columns,
                inner=sql.SQL(inner),
                key=sql.Identifier(resource.key),
                tenant=sql.Identifier(resource.tenant),
                value=sql.Literal(tenant),
            )
            views.append(View(name, tenant, view_name(name, tenant), select.as_string(conn)))
    _check_names(options.schema, views)
    role_exists = await _role_checked(conn, options)
    replaced = await _replaced(conn, options, views)
    return AccessPlan(options, tuple(views), role_exists, tuple(replaced), tuple(notes))


async def _lower_collation(conn: psycopg.AsyncConnection[Any]) -> str | None:
    """ICU's root collation lower-cases every letter as Python's str.lower() does (full case
    mapping, final sigma); the C collation only ASCII ones."""
    rows = await _rows(
        conn,
        "SELECT collname FROM pg_collation WHERE collname = 'und-x-icu' AND collprovider = 'i'",
        None,
        "reading the collations",
    )
    return str(rows[0][0]) if rows else None


async def _tenants(
    conn: psycopg.AsyncConnection[Any], name: str, resource: Resource, given: Sequence[str]
) -> list[str]:
    if given:
        return list(dict.fromkeys(given))
    if resource.tenants_query is None:
        raise ConfigurationError(
            f"resources.{name}: which tenants? it has no tenants_query: give them with --tenant"
        )
    # Run as recompute.py runs it: without parameters, so a % is literal.
    query = sql.SQL(resource.tenants_query)
    rows = await _rows(conn, query, None, f"resources.{name}.tenants_query")
    return list(dict.fromkeys(str(row[0]) for row in rows if row[0] is not None))


async def _inner_query(conn: psycopg.AsyncConnection[Any], name: str, resource: Resource) -> str:
    """The recompute query (group columns included) over every entity id: its ``%(ids)s`` is
    the array of the ids the backfill would walk (the first column of that query, of the key
    column's own type, as ``= ANY(...)`` compares it), all pages at once (no ``after``, no
    ``limit``)."""
    page = (await ids_query(conn, name, resource)).as_string(conn).strip().rstrip(";")
    every = bind(page, {"after": "NULL", "limit": "NULL"}, f"resources.{name}.backfill.ids_query")
    ids = f"ARRAY(SELECT reach_ids.entity_id FROM ({every}) AS reach_ids(entity_id))"
    return bind(recompute_query(resource).as_string(conn), {"ids": ids}, f"resources.{name}.query")


async def _column_types(
    conn: psycopg.AsyncConnection[Any], name: str, inner: str
) -> dict[str, ColumnType]:
    """The query's columns and their types, from a run that computes no row."""
    probe = _q("SELECT * FROM ({inner}) AS q LIMIT 0", inner=sql.SQL(inner))
    what = f"resources.{name}.query"
    async with _classified(what):
        cursor = await conn.execute(probe)
        columns = [(column.name, column.type_code) for column in cursor.description or ()]
    rows = await _rows(
        conn,
        "SELECT t.oid, t.typname, t.typtype = 'e', e.typname FROM pg_type t "
        "LEFT JOIN pg_type e ON t.typcategory = 'A' AND e.oid = t.typelem "
        "WHERE t.oid = ANY(%s)",
        ([oid for _, oid in columns],),
        what,
    )
    types = {oid: ColumnType(typname, enum, element) for oid, typname, enum, element in rows}
    return {column: types[oid] for column, oid in columns}


def _projection(
    name: str, resource: Resource, types: Mapping[str, ColumnType], collation: str | None
) -> tuple[sql.Composable, list[str]]:
    """The view's columns (the mapping's fields in order, then the groups field) and the notes
    of those that are not exactly what the API sends."""
    for role, column in (("key", resource.key), ("tenant", resource.tenant)):
        if column not in types:
            raise ConfigurationError(f"resources.{name}: the query has no {role} column {column!r}")
    columns: list[sql.Composable] = []
    notes: list[str] = []
    for field, mapping in resource.mapping.items():
        if mapping.column not in types:
            raise ConfigurationError(
                f"resources.{name}.mapping.{field}: the query has no column {mapping.column!r}"
            )
        expression = field_expression(mapping, types[mapping.column], collation)
        columns.append(_q("{e} AS {f}", e=expression.sql, f=sql.Identifier(field)))
        if expression.note is not None:
            notes.append(f"{name}.{field}: {expression.note}")
    if resource.groups is not None:
        names = [rule.name for rule in resource.groups.rules]
        groups = groups_expression(names, {n: GROUP_COLUMN_PREFIX + n for n in names})
        columns.append(_q("{e} AS {f}", e=groups, f=sql.Identifier(resource.groups.field)))
    fields = [*resource.mapping, *([] if resource.groups is None else [resource.groups.field])]
    too_long = [f for f in fields if len(f.encode()) > MAX_NAME]
    if too_long:
        raise ConfigurationError(
            f"resources.{name}: field names longer than {MAX_NAME} bytes cannot be view "
            f"columns: {', '.join(too_long)}"
        )
    return sql.SQL(",\n       ").join(columns), notes


def _check_names(schema: str, views: Sequence[View]) -> None:
    """Every view a name of its own, whole (not cut at MAX_NAME)."""
    seen: dict[str, View] = {}
    for view in views:
        if len(view.name) > MAX_NAME:
            raise ConfigurationError(
                f"the view of {view.resource} for tenant {view.tenant!r} would be named "
                f"{schema}.{view.name}, over {MAX_NAME} characters"
            )
        other = seen.get(view.name)
        if other is not None:
            raise ConfigurationError(
                f"two views would be named {schema}.{view.name}: {other.resource} for tenant "
                f"{other.tenant!r} and {view.resource} for tenant {view.tenant!r}"
            )
        seen[view.name] = view


# --- the role and the schema as they are --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Role:
    problems: tuple[str, ...]
    elsewhere: tuple[str, ...]  # databases where it has privileges (drop cannot drop it then)


_SHARED_DEPENDENCIES = """
SELECT d.deptype, d.classid = 'pg_class'::regclass AND n.nspname = %(schema)s,
       d.classid = 'pg_namespace'::regclass AND d.objid = to_regnamespace(%(schema)s)::oid,
       d.classid = 'pg_database'::regclass,
       CASE WHEN d.dbid IN (0, here.oid) THEN pg_describe_object(d.classid, d.objid, d.objsubid)
       END,
       d.dbid IN (0, here.oid), db.datname
  FROM pg_shdepend d
  CROSS JOIN (SELECT oid FROM pg_database WHERE datname = current_database()) AS here
  LEFT JOIN pg_database db ON db.oid = d.dbid
  LEFT JOIN pg_class c ON d.dbid = here.oid AND d.classid = 'pg_class'::regclass
        AND c.oid = d.objid
  LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = %(role)s
"""


async def _role(conn: psycopg.AsyncConnection[Any], options: AccessOptions) -> _Role | None:
    """The role, if it exists, and every right it has beyond what db-access grants: an
    attribute, a membership, an object it owns, a grant in this database on anything but the
    access schema, its relations and the database itself."""
    what = f"reading role {options.role}"
    found = await _rows(
        conn,
        "SELECT oid, " + ", ".join(a for a, _ in _ROLE_ATTRIBUTES) + " FROM pg_roles "
        "WHERE rolname = %s",
        (options.role,),
        what,
    )
    if not found:
        return None
    oid, *attributes = found[0]
    labels = [label for _, label in _ROLE_ATTRIBUTES]
    problems = [label for label, held in zip(labels, attributes, strict=True) if held]
    groups = await _rows(
        conn,
        "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "WHERE m.member = %s ORDER BY 1",
        (oid,),
        what,
    )
    problems += [f"membership in role {group}" for (group,) in groups]
    elsewhere: list[str] = []
    params = {"schema": options.schema, "role": oid}
    for kind, in_schema, is_schema, is_database, described, here, database in await _rows(
        conn, _SHARED_DEPENDENCIES, params, what
    ):
        if not here:
            elsewhere.append(str(database))
            if kind == "o":
                problems.append(f"ownership of objects in database {database}")
        elif kind == "o":
            problems.append(f"ownership of {described}")
        elif kind == "a" and not (in_schema or is_schema or is_database):
            problems.append(f"a grant on {described}")
    return _Role(tuple(problems), tuple(sorted(set(elsewhere))))


async def _role_checked(conn: psycopg.AsyncConnection[Any], options: AccessOptions) -> bool:
    """Whether the role exists; ConfigurationError when it has more rights than a reader."""
    role = await _role(conn, options)
    if role is not None and role.problems:
        raise ConfigurationError(
            f"role {options.role} already exists with more rights than reading the views: "
            f"{'; '.join(role.problems)}. Refusing to give it the views; choose another --role"
        )
    return role is not None


@dataclass(frozen=True, slots=True)
class _Object:
    name: str
    kind: str
    comment: str | None

    def made_for(self) -> str | None:
        """The role db-access made this view for; None: not made by db-access."""
        if self.kind != "v" or self.comment is None or not self.comment.startswith(MARKER):
            return None
        return self.comment.removeprefix(MARKER).split(":", 1)[0]

    def describe(self, schema: str) -> str:
        return f"{schema}.{self.name} ({_KINDS.get(self.kind, 'a relation')})"


async def _schema_objects(conn: psycopg.AsyncConnection[Any], schema: str) -> list[_Object]:
    rows = await _rows(
        conn,
        "SELECT c.relname, c.relkind, obj_description(c.oid, 'pg_class') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s "
        "UNION ALL SELECT p.proname, 'function', NULL FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %(s)s ORDER BY 1",
        {"s": schema},
        f"reading schema {schema}",
    )
    return [_Object(str(name), str(kind), comment) for name, kind, comment in rows]


async def _replaced(
    conn: psycopg.AsyncConnection[Any], options: AccessOptions, views: Sequence[View]
) -> list[str]:
    """The role's views now in the schema (dropped, then created again); ConfigurationError
    when the schema holds anything else db-access did not make, or another role's view by a
    name this plan needs."""
    planned = {view.name for view in views}
    replaced: list[str] = []
    for found in await _schema_objects(conn, options.schema):
        made_for = found.made_for()
        if made_for == options.role:
            replaced.append(found.name)
        elif made_for is not None and found.name in planned:
            raise ConfigurationError(
                f"{options.schema}.{found.name} already exists, a view db-access made for role "
                f"{made_for}: refusing to replace it"
            )
        elif made_for is None:
            if found.name in planned:
                raise ConfigurationError(
                    f"{found.describe(options.schema)} already exists and db-access did not "
                    "make it: refusing to replace it"
                )
            raise ConfigurationError(
                f"schema {options.schema} holds {found.describe(options.schema)}, which "
                "db-access did not make: give db-access a schema of its own (--schema)"
            )
    return replaced


# --- apply, drop ---------------------------------------------------------------------------------


def script(plan: AccessPlan, conn: psycopg.AsyncConnection[Any], password: str) -> str:
    """The whole SQL of an apply, as plan prints it; ``password`` stands for the password."""
    statements = [_LOCK, *plan.statements(sql.SQL(password))]
    body = ";\n".join(s.as_string(conn) for s in statements)
    return f"BEGIN;\n{body};\nCOMMIT;\n"


async def _verifier(conn: psycopg.AsyncConnection[Any], role: str, password: str) -> str:
    """The password as the server stores it (SCRAM, as password_encryption says), made here,
    so that the password itself never reaches the server or its statement log."""
    rows = await _rows(conn, "SHOW password_encryption", None, "reading password_encryption")
    algorithm = str(rows[0][0]).encode()
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), algorithm).decode()


async def apply_access(
    conn: psycopg.AsyncConnection[Any],
    definition: SyncDefinition,
    options: AccessOptions,
    password: str,
) -> AccessPlan:
    """Plan and apply in one transaction; a refusal or an error leaves the database as it was.
    Run again, it creates the views anew and sets the password again (a rotation)."""
    async with _classified("db-access apply"), conn.transaction():
        await conn.execute(_LOCK)
        plan = await plan_access(conn, definition, options)
        password_sql = sql.Literal(await _verifier(conn, options.role, password))
        for statement in plan.statements(password_sql):
            await conn.execute(statement)
    return plan


async def planned(
    conn: psycopg.AsyncConnection[Any], definition: SyncDefinition, options: AccessOptions
) -> AccessPlan:
    """plan_access in a transaction rolled back: it sees one state and writes nothing."""
    async with _classified("db-access plan"), conn.transaction(force_rollback=True):
        return await plan_access(conn, definition, options)


async def drop_access(conn: psycopg.AsyncConnection[Any], options: AccessOptions) -> Dropped:
    """Drop the role's views, the schema if nothing else is in it, and the role, in one
    transaction. A role with more rights than a reader's is refused (it is not db-access's);
    a role with privileges in other databases is kept (DROP ROLE would fail)."""
    check_name("schema", options.schema)
    check_name("role", options.role)
    done: list[str] = []
    kept: list[str] = []
    schema, role_name = sql.Identifier(options.schema), sql.Identifier(options.role)
    async with _classified("db-access drop"), conn.transaction():

        async def run(statement: sql.Composed) -> None:
            await conn.execute(statement)
            done.append(statement.as_string(conn))

        await conn.execute(_LOCK)
        role = await _role(conn, options)
        if role is not None and role.problems:
            raise ConfigurationError(
                f"role {options.role} has more rights than db-access gives: "
                f"{'; '.join(role.problems)}. Refusing to drop it"
            )
        objects = await _schema_objects(conn, options.schema)
        for found in objects:
            if found.made_for() == options.role:
                await run(_q("DROP VIEW {v}", v=sql.Identifier(options.schema, found.name)))
        if await _schema_exists(conn, options.schema):
            if role is not None:
                await run(_q("REVOKE ALL ON SCHEMA {s} FROM {r}", s=schema, r=role_name))
            if await _schema_holds_anything(conn, options.schema):
                kept.append(f"schema {options.schema}: it holds other objects")
            else:
                await run(_q("DROP SCHEMA {s}", s=schema))
        if role is not None:
            # It owns nothing (checked): DROP OWNED only revokes its privileges in this database.
            await run(_q("DROP OWNED BY {r}", r=role_name))
            if role.elsewhere:
                kept.append(
                    f"role {options.role}: it has privileges in database "
                    f"{', '.join(role.elsewhere)} (run drop there too)"
                )
            else:
                await run(_q("DROP ROLE {r}", r=role_name))
    return Dropped(tuple(done), tuple(kept))


async def _schema_holds_anything(conn: psycopg.AsyncConnection[Any], schema: str) -> bool:
    """Whether anything at all is in the schema (what DROP SCHEMA without CASCADE refuses)."""
    rows = await _rows(
        conn,
        "SELECT 1 FROM pg_depend WHERE refclassid = 'pg_namespace'::regclass "
        "AND refobjid = to_regnamespace(%s)::oid LIMIT 1",
        (schema,),
        f"reading schema {schema}",
    )
    return bool(rows)


async def _schema_exists(conn: psycopg.AsyncConnection[Any], schema: str) -> bool:
    rows = await _rows(
        conn, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,), "reading schemas"
    )
    return bool(rows)
