"""The definition checked against the source database itself, before any work starts.

A definition can be well formed and still be wrong about the database: a trigger on
``customer_idd`` makes nothing dirty, a mapping of ``created_att`` sends null for every record,
a join that fans out sends one of two rows by chance. All pass YAML validation and fail
silently at run time, so ``validate --source`` and ``run`` (at startup) ask the database: its
catalog about the triggers (triggers.py), each query run on no rows about its columns and their
types (queries.py), and each resource query run with a bounded sample of real ids about what
only rows show (sample.py). Read-only, one statement at a time (autocommit), so one failure
does not hide the next. Each finding is a ``path: reason`` line for DefinitionError to place in
the file, and says whether it stops ``run``: a mistake in the definition does; a problem of some
rows of data does not (those records are dead-lettered, the others go on).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from consumer.config import SyncDefinition
from consumer.config_file import located
from consumer.errors import DefinitionError, Retryable
from consumer.source_check.findings import Finding
from consumer.source_check.queries import query_findings
from consumer.source_check.sample import SAMPLE_IDS, sample_findings
from consumer.source_check.triggers import replica_declarations, trigger_findings

__all__ = ["SAMPLE_IDS", "Finding", "check_source", "source_findings", "source_problems"]

CONNECT_TIMEOUT_S = 10


def check_source(
    definition: SyncDefinition, path: Path, *, sample: int = SAMPLE_IDS
) -> DefinitionError | None:
    """Raise DefinitionError placing every finding in ``path``'s lines when any stops ``run``;
    else return those that do not, placed the same way, to be told (None: nothing found).
    ``sample``: how many ids of each resource to try its query with (0: none). Retryable when
    the database cannot be reached."""
    source = definition.source.database
    options = (
        f"-c statement_timeout={source.statement_timeout_ms} -c default_transaction_read_only=on"
    )
    try:
        conn = psycopg.connect(
            source.dsn.get_secret_value(),
            autocommit=True,
            options=options,
            connect_timeout=CONNECT_TIMEOUT_S,
        )
    except psycopg.OperationalError as exc:
        raise Retryable(f"source database unavailable for the definition check: {exc}") from exc
    with conn:
        findings = source_findings(definition, conn, sample=sample)
    if not findings:
        return None
    placed = located(path, [finding.line for finding in findings])
    if any(finding.stops_run for finding in findings):
        raise placed
    return placed


def source_findings(
    definition: SyncDefinition, conn: psycopg.Connection[Any], *, sample: int = SAMPLE_IDS
) -> list[Finding]:
    """Everything the database shows in ``definition``; Retryable when it cannot be reached."""
    try:
        findings = replica_declarations(conn, definition)
        for name, resource in definition.resources.items():
            findings += trigger_findings(conn, name, resource)
            found, described = query_findings(conn, name, resource)
            findings += found
            # Real ids only tell more about a query that runs and returns its key and tenant.
            needed = {f"resources.{name}.{part}" for part in ("query", "key", "tenant")}
            if resource.backfill.ids_query is not None:
                needed.add(f"resources.{name}.backfill.ids_query")
            broken = any(f.stops_run and f.where in needed for f in found)
            if sample > 0 and described is not None and not broken:
                findings += sample_findings(conn, name, resource, sample, described)
    except psycopg.OperationalError as exc:
        raise Retryable(f"source database unavailable for the definition check: {exc}") from exc
    return findings


def source_problems(definition: SyncDefinition, conn: psycopg.Connection[Any]) -> list[str]:
    """The findings that stop ``run``, as ``path: reason`` lines; Retryable when the database
    cannot be reached."""
    return [f.line for f in source_findings(definition, conn) if f.stops_run]
