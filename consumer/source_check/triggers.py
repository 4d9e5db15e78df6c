"""The triggers against the source tables: the table and its id column exist, the replica
identity a trigger relies on is the table's, and a lookup runs and returns the entity ids."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import psycopg
from psycopg import sql

from consumer.config import Resource, SyncDefinition, Trigger
from consumer.source_check.catalog import before_image, describe, primary_key, table_columns
from consumer.source_check.column_types import id_problem
from consumer.source_check.findings import Finding

__all__ = ["replica_declarations", "trigger_findings"]

_IDENTITIES = {"d": "DEFAULT", "n": "NOTHING", "i": "USING INDEX", "f": "FULL"}


def replica_declarations(
    conn: psycopg.Connection[Any], definition: SyncDefinition
) -> list[Finding]:
    """One table, one replica identity: a trigger on a foreign key declaring ``default`` beside
    one declaring ``full`` ignores the before images the other relies on (a trigger on the
    table's own key reads the event key and is right either way)."""
    declared: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for name, resource in definition.resources.items():
        for i, trigger in enumerate(resource.triggers):
            declared[trigger.table][trigger.replica_identity].append(
                (f"resources.{name}.triggers[{i}]", trigger.id)
            )
    findings = []
    for table, by_identity in declared.items():
        if len(by_identity) < 2:
            continue
        key = set(primary_key(conn, table))
        full = ", ".join(where for where, _ in by_identity["full"])
        findings += [
            Finding(
                f"{where}.replica_identity",
                f"{table} is declared full by {full} and default here, for {column}, not its "
                "key: before images would be ignored here; declare one replica identity per table",
            )
            for where, column in by_identity["default"]
            if column not in key
        ]
    return findings


def trigger_findings(conn: psycopg.Connection[Any], name: str, resource: Resource) -> list[Finding]:
    findings = []
    for i, trigger in enumerate(resource.triggers):
        where = f"resources.{name}.triggers[{i}]"
        columns = table_columns(conn, trigger.table)
        if not columns:
            findings.append(
                Finding(f"{where}.table", f"no table {trigger.table} in the source database")
            )
            continue
        if trigger.id not in columns:
            findings.append(
                Finding(
                    f"{where}.id",
                    f"{trigger.table} has no column {trigger.id} (it has {', '.join(columns)})",
                )
            )
        elif trigger.replica_identity == "full":
            findings += _replica_identity(conn, where, trigger)
        if trigger.lookup is not None:
            findings += _lookup(conn, where, trigger.lookup)
    return findings


def _replica_identity(conn: psycopg.Connection[Any], where: str, trigger: Trigger) -> list[Finding]:
    """``full`` declared: the table's before images must hold the id column, or a row moving
    from one entity to another (or deleted) never makes the old one dirty."""
    identity, holds = before_image(conn, trigger.table, trigger.id)
    if holds:
        return []
    return [
        Finding(
            f"{where}.replica_identity",
            f"declared full, but {trigger.table} has REPLICA IDENTITY "
            f"{_IDENTITIES.get(identity, identity)}: the before images of its updates and "
            f"deletes do not hold {trigger.id}, so the entity a row leaves is never made dirty; "
            f"run ALTER TABLE {trigger.table} REPLICA IDENTITY FULL",
        )
    ]


def _lookup(conn: psycopg.Connection[Any], where: str, lookup: str) -> list[Finding]:
    """The lookup runs (on no ids) and returns one column, of a type an id can have."""
    described = describe(conn, sql.SQL(lookup), {"ids": []})
    if isinstance(described, str):
        return [Finding(f"{where}.lookup", f"the lookup fails: {described}")]
    if len(described.columns) != 1:
        return [
            Finding(
                f"{where}.lookup",
                f"the lookup returns {len(described.columns)} columns "
                f"({', '.join(described.names)}): it must return the entity ids alone, in one "
                "column",
            )
        ]
    column, kind = described.columns[0]
    problem = id_problem(column, kind)
    return [] if problem is None else [Finding(f"{where}.lookup", f"the lookup's column {problem}")]
