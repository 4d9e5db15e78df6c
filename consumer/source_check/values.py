"""Mapped values in the sampled rows that Reach cannot be sent, found by the database.

A timestamp or date column may hold ``infinity`` or a date before year 1 or after 9999, a
numeric or float column ``NaN`` or ``Infinity``: JSON and Reach's date-time have no such
values, so at run time each such record is dead-lettered, naming the field (recompute.py,
projection.py). The types that allow them are known from the query's description; the test runs
in the database, one boolean per column and row, so no value (PII or not) is read. Rows, not
the definition, are wrong: this is told and does not stop ``run``.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors, sql

from consumer.config import Resource
from consumer.source_check.catalog import Described
from consumer.source_check.findings import Finding
from consumer.source_check.queries import base_query

__all__ = ["unsendable_findings"]

_MOMENTS = frozenset({"date", "timestamp", "timestamptz"})
_NUMBERS = frozenset({"numeric", "float4", "float8"})


def _unsendable(column: sql.Composable, type_name: str) -> sql.Composable | None:
    """A predicate true where ``column``'s value cannot be sent, for the types that allow one."""
    if type_name in _MOMENTS:
        return sql.SQL(
            "(NOT isfinite({c}) OR extract(year FROM {c}) NOT BETWEEN 1 AND 9999)"
        ).format(c=column)
    if type_name in _NUMBERS:
        # As text, so that it also reads on servers whose numeric has no infinity (before 14).
        return sql.SQL("({c}::text IN ('NaN', 'Infinity', '-Infinity'))").format(c=column)
    return None


def unsendable_findings(
    conn: psycopg.Connection[Any],
    where: str,
    resource: Resource,
    described: Described,
    asked: list[str],
    what: str,
) -> list[Finding]:
    """One finding per mapped field whose column holds such a value in the sampled rows."""
    checked: list[tuple[str, str, str, sql.Composable]] = []
    for field, mapping in resource.mapping.items():
        kind = described.type_of(mapping.column)
        test = None if kind is None else _unsendable(sql.Identifier("q", mapping.column), kind.name)
        if kind is not None and test is not None:
            checked.append((field, mapping.column, kind.display, test))
    if not checked:
        return []
    query = sql.SQL("SELECT q.{key}, {tests} FROM ({base}) AS q").format(
        key=sql.Identifier(resource.key),
        tests=sql.SQL(", ").join(test for *_, test in checked),
        base=base_query(resource),
    )
    try:
        rows = conn.execute(query, {"ids": asked}).fetchall()
    except errors.QueryCanceled:
        return []  # the sample's own query already said it is slow
    except psycopg.OperationalError:
        raise
    except psycopg.Error:
        return []  # failing rows are reported by the sample's own query
    findings = []
    for index, (field, column, display, _) in enumerate(checked, start=1):
        bad = [str(row[0]) for row in rows if row[index]]
        if bad:
            more = f"and {len(bad) - 1} more " if len(bad) > 1 else ""
            findings.append(
                Finding(
                    f"{where}.mapping.{field}.column",
                    f"{column} ({display}) holds a value Reach cannot be sent (infinity, a date "
                    f"before year 1 or after 9999, NaN or Infinity) for id {bad[0]} ({more}of "
                    f"{len(asked)} sampled from {what}): those records are dead-lettered, naming "
                    "the field; fix the rows, or map such values in the query",
                    stops_run=False,
                )
            )
    return findings
