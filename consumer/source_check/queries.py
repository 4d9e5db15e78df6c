"""A resource's queries against the source database, run on no rows: the query returns the key,
the tenant and every mapped column, each in a type its use can read, and keeps to the ids it is
given; every group rule is a condition; the backfill and tenants queries run."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from consumer.config import Resource
from consumer.source_check.catalog import Described, describe
from consumer.source_check.column_types import a_type, format_problem, id_problem, is_moment
from consumer.source_check.findings import Finding

__all__ = ["base_query", "query_findings"]


def base_query(resource: Resource) -> sql.SQL:
    """The resource's query as recompute runs it (without the group rules' columns)."""
    return sql.SQL(resource.query.strip().rstrip(";"))


def query_findings(
    conn: psycopg.Connection[Any], name: str, resource: Resource
) -> tuple[list[Finding], Described | None]:
    """The findings, and the query's result columns (None when it fails)."""
    where = f"resources.{name}"
    base = base_query(resource)
    described = describe(conn, base, {"ids": []})
    if isinstance(described, str):
        return [Finding(f"{where}.query", f"the query fails: {described}")], None
    findings = []
    for field, column in (("key", resource.key), ("tenant", resource.tenant)):
        kind = described.type_of(column)
        problem = _missing(column, described) if kind is None else id_problem(column, kind)
        if problem is not None:
            findings.append(Finding(f"{where}.{field}", problem))
    for field, mapping in resource.mapping.items():
        kind = described.type_of(mapping.column)
        if kind is None:
            problem = _missing(mapping.column, described)
        else:
            problem = format_problem(mapping.format, mapping.column, kind)
        if problem is not None:
            findings.append(Finding(f"{where}.mapping.{field}.column", problem))
    read = {resource.key, resource.tenant, *(m.column for m in resource.mapping.values())}
    for column in sorted(c for c in read if described.names.count(c) > 1):
        findings.append(
            Finding(
                f"{where}.query",
                f"the query returns {described.names.count(column)} columns named {column}: "
                "recompute reads the last one alone; alias them apart",
            )
        )
    findings += _keeps_to_its_ids(conn, where, base)
    findings += _group_rules(conn, where, resource, base)
    findings += _backfill(conn, where, resource, described)
    if resource.tenants_query is not None:
        # Run as recompute runs it: without parameters.
        tenants = describe(conn, sql.SQL(resource.tenants_query))
        if isinstance(tenants, str):
            findings.append(
                Finding(f"{where}.tenants_query", f"the tenants_query fails: {tenants}")
            )
    return findings, described


def _keeps_to_its_ids(conn: psycopg.Connection[Any], where: str, base: sql.SQL) -> list[Finding]:
    """Run with no ids, the query must return nothing: a row means it reads past its ids (an
    OR without parentheses, a filter on the wrong alias), and every recompute would read far
    more than its window."""
    try:
        row = conn.execute(
            sql.SQL("SELECT 1 FROM ({}) AS q LIMIT 1").format(base), {"ids": []}
        ).fetchone()
    except psycopg.errors.QueryCanceled:
        return [
            Finding(
                f"{where}.query",
                "run with no ids, the query ran over statement_timeout_ms: it may read the whole "
                "table rather than the ids it is given (or miss an index); not checked",
                stops_run=False,
            )
        ]
    except psycopg.OperationalError:
        raise
    except psycopg.Error:
        return []  # a row's value fails to compute: the data checks see to rows
    if row is None:
        return []
    return [
        Finding(
            f"{where}.query",
            "run with no ids, the query returns rows: it does not keep to the ids it is given, "
            "so every recompute would read the whole table; select by them, e.g. "
            "WHERE c.id = ANY(%(ids)s) AND (...) (mind OR without parentheses)",
        )
    ]


def _group_rules(
    conn: psycopg.Connection[Any], where: str, resource: Resource, base: sql.SQL
) -> list[Finding]:
    if resource.groups is None:
        return []
    findings = []
    for i, rule in enumerate(resource.groups.rules):
        at = f"{where}.groups.rules[{i}].when"
        one = sql.SQL("SELECT ({}) AS rule FROM ({}) AS q").format(sql.SQL(rule.when), base)
        described = describe(conn, one, {"ids": []})
        if isinstance(described, str):
            findings.append(Finding(at, f"the rule fails: {described}"))
            continue
        kind = described.columns[0][1]
        if kind.name != "bool":
            example = f"{rule.when} > 0" if kind.category == "N" else f"{rule.when} IS NOT NULL"
            findings.append(
                Finding(
                    at,
                    f"the rule is {a_type(kind)}, not a condition: write one that is true or "
                    f"false, e.g. {example}",
                )
            )
    return findings


def _backfill(
    conn: psycopg.Connection[Any], where: str, resource: Resource, described: Described
) -> list[Finding]:
    """``ids_query`` runs (on its first page, empty) and returns the ids alone; ``since_column``
    is a moment among the query's columns (backfill/walk.py compares it with one)."""
    findings = []
    backfill = resource.backfill
    if backfill.ids_query is not None:
        at = f"{where}.backfill.ids_query"
        ids = describe(conn, sql.SQL(backfill.ids_query), {"after": None, "limit": 0})
        if isinstance(ids, str):
            findings.append(Finding(at, f"the ids_query fails: {ids}"))
        elif len(ids.columns) != 1:
            findings.append(
                Finding(
                    at,
                    f"the ids_query returns {len(ids.columns)} columns ({', '.join(ids.names)}): "
                    "it must return the entity ids alone, in one column, in ascending order",
                )
            )
        elif (problem := id_problem(*ids.columns[0])) is not None:
            findings.append(Finding(at, f"the ids_query's column {problem}"))
    column = backfill.since_column
    if column is not None:
        at = f"{where}.backfill.since_column"
        kind = described.type_of(column)
        if kind is None:
            findings.append(Finding(at, _missing(column, described)))
        elif not is_moment(kind):
            findings.append(
                Finding(
                    at,
                    f"{column} is {a_type(kind)}, and --since compares it with a moment: name "
                    "a date, timestamp or timestamptz column of the query (an update time)",
                )
            )
    return findings


def _missing(column: str, described: Described) -> str:
    return f"the query returns no column {column} (it returns {', '.join(described.names)})"
