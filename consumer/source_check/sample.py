"""The resource query run on real ids: what a query on no rows cannot show.

Up to ``size`` ids are read where backfill reads them (``backfill.ids_query``, else the primary
key of the trigger table that names the entity by its own key: backfill/walk.py's rule), and the
query is run with them as recompute runs it (the ids as text). Only the key and whether the
tenant is null come back: no mapped value, PII or not, is read.

What the rows show about the definition stops ``run``: two rows for one id (a join fans out:
which one is sent is chance), a key that was not asked for or is null (the key names another
column), a tenant null in every row (the tenant names the wrong column), the query failing for
every id (``%(ids)s`` cast to a type the ids are not). What they show about some rows does not:
a null tenant, a failing row or a missing row of some entities is theirs alone (``run``
dead-letters those records, or deletes those entities, and goes on with the others), so
``validate --source`` says it and ``run`` starts.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, sql

from consumer.config import Resource
from consumer.sink.projection import WITHHELD
from consumer.source_check.catalog import Described, primary_key, reason
from consumer.source_check.findings import Finding
from consumer.source_check.queries import base_query
from consumer.source_check.values import unsendable_findings

__all__ = ["SAMPLE_IDS", "sample_findings", "sampled"]

# How many ids of each resource the query is tried with, by default.
SAMPLE_IDS = 100

# Errors that may belong to some rows only: recompute dead-letters those entities alone.
_ROW_ERRORS = (psycopg.DataError, errors.CardinalityViolation)
# The input a server message quotes ('invalid input syntax for type bigint: "..."'), withheld
# as recompute withholds it (it may be a mapped value); an encoding's name is kept.
_QUOTED_INPUT = re.compile(r'(?<!encoding )"[^"]*"')


@dataclass(frozen=True, slots=True)
class _IdSource:
    what: str
    query: sql.SQL | sql.Composed
    params: dict[str, Any]


def sample_findings(
    conn: psycopg.Connection[Any],
    name: str,
    resource: Resource,
    size: int,
    described: Described | None = None,
) -> list[Finding]:
    """What running the query with up to ``size`` real ids shows (nothing for an empty table);
    with the query's ``described`` columns, also the mapped values Reach cannot be sent."""
    where = f"resources.{name}"
    source = _id_source(conn, resource, size)
    if source is None:
        return [
            Finding(
                f"{where}.backfill",
                "no trigger table names the entity by its own primary key, so backfill cannot "
                "walk its ids and the query was not tried with real ones; set "
                "backfill.ids_query",
                stops_run=False,
            )
        ]
    try:
        ids = [row[0] for row in conn.execute(source.query, source.params).fetchall()]
    except errors.QueryCanceled:
        return [_slow(where, f"reading {size} ids from {source.what}")]
    except psycopg.OperationalError:
        raise
    except psycopg.Error:
        return []  # a failing ids_query is reported with the queries
    asked = [str(i) for i in ids if i is not None]
    if not asked:
        return []
    query = sql.SQL("SELECT q.{key}, q.{tenant} IS NULL FROM ({base}) AS q").format(
        key=sql.Identifier(resource.key),
        tenant=sql.Identifier(resource.tenant),
        base=base_query(resource),
    )
    try:
        rows, failed = _collect(conn, query, asked)
    except errors.QueryCanceled:
        return [_slow(where, f"the query with {len(asked)} ids sampled from {source.what}")]
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        return [
            Finding(
                f"{where}.query",
                f"the query fails with {len(asked)} ids sampled from {source.what}: "
                f"{_withheld(reason(exc))}",
            )
        ]
    findings = sampled(where, resource, source.what, asked, rows, failed)
    if described is not None and not failed:
        findings += unsendable_findings(conn, where, resource, described, asked, source.what)
    return findings


def sampled(
    where: str,
    resource: Resource,
    what: str,
    asked: Sequence[str],
    rows: Sequence[tuple[Any, bool]],
    failed: Mapping[str, str],
) -> list[Finding]:
    """The findings of the query run with ``asked`` (ids sampled from ``what``): ``rows`` as
    (key, tenant is null), ``failed`` the ids whose rows failed, with why."""
    n, key, tenant = len(asked), resource.key, resource.tenant
    findings = []
    if failed:
        first = next(i for i in asked if i in failed)
        if len(failed) == n:
            findings.append(
                Finding(
                    f"{where}.query",
                    f"the query fails for each of the {n} ids sampled from {what}: "
                    f"{failed[first]}; it must run with real ids (is %(ids)s cast to a type "
                    "they are not?)",
                )
            )
        else:
            findings.append(
                Finding(
                    f"{where}.query",
                    f"the query fails for id {first}{_more(len(failed), n, what)}: "
                    f"{failed[first]}; those records are dead-lettered",
                    stops_run=False,
                )
            )
    keys = [None if value is None else str(value) for value, _ in rows]
    if None in keys:
        findings.append(
            Finding(
                f"{where}.key",
                f"{key} is null in {keys.count(None)} of the {len(rows)} rows returned for {n} "
                f"ids sampled from {what}: the key must be the id the query selects by",
            )
        )
    counts = Counter(k for k in keys if k is not None)
    wanted = set(asked)
    stray = [k for k in counts if k not in wanted]
    if stray:
        findings.append(
            Finding(
                f"{where}.key",
                f"asked for {n} ids sampled from {what}, the query returned {key} {stray[0]}"
                f"{_others(len(stray) - 1)}, not one of them: key {key} names the wrong column, "
                "or the query selects by another",
            )
        )
    fanned = [i for i in asked if counts[i] > 1]
    if fanned:
        findings.append(
            Finding(
                f"{where}.query",
                f"the query returned {counts[fanned[0]]} rows for id {fanned[0]}"
                f"{_more(len(fanned), n, what)}: a join fans out; return one row per id (aggregate "
                "the joined rows, or pick one with DISTINCT ON)",
            )
        )
    no_tenant = [k for k, (_, null) in zip(keys, rows, strict=True) if null and k is not None]
    no_tenant = list(dict.fromkeys(no_tenant))
    if rows and all(null for _, null in rows):
        findings.append(
            Finding(
                f"{where}.tenant",
                f"tenant column {tenant} is null in every row returned for the {n} ids sampled "
                f"from {what}: it names the wrong column, or its join finds nothing",
            )
        )
    elif no_tenant:
        findings.append(
            Finding(
                f"{where}.tenant",
                f"tenant column {tenant} is null for id {no_tenant[0]}"
                f"{_more(len(no_tenant), n, what)}: those records are dead-lettered until it is "
                "set",
                stops_run=False,
            )
        )
    gone = [i for i in asked if i not in counts and i not in failed]
    if gone and not stray:  # stray keys: the asked ids are not what the key column holds
        findings.append(
            Finding(
                f"{where}.query",
                f"the query returns no row for id {gone[0]}{_more(len(gone), n, what)}: "
                "recompute takes such an entity as deleted, and deletes it from Reach; if it "
                "exists, a join or a condition of the query drops it",
                stops_run=False,
            )
        )
    return findings


def _id_source(conn: psycopg.Connection[Any], resource: Resource, size: int) -> _IdSource | None:
    """Where backfill reads the resource's ids (backfill/walk.py, ids_query), first page."""
    if resource.backfill.ids_query is not None:
        return _IdSource(
            "backfill.ids_query",
            sql.SQL(resource.backfill.ids_query),
            {"after": None, "limit": size},
        )
    for trigger in resource.triggers:
        if trigger.lookup is None and primary_key(conn, trigger.table) == [trigger.id]:
            column = sql.Identifier(trigger.id)
            table = sql.Identifier(*trigger.table.split(".", 1))
            query = sql.SQL("SELECT {c} FROM {t} ORDER BY {c} LIMIT %(limit)s")
            return _IdSource(trigger.table, query.format(c=column, t=table), {"limit": size})
    return None


def _collect(
    conn: psycopg.Connection[Any], query: sql.Composed, ids: list[str]
) -> tuple[list[tuple[Any, bool]], dict[str, str]]:
    """The rows for ``ids``, and the ids whose rows fail (by halves, as recompute finds them),
    with why; an error that is not a row's is raised."""
    try:
        return [(row[0], bool(row[1])) for row in conn.execute(query, {"ids": ids})], {}
    except _ROW_ERRORS as exc:
        if len(ids) == 1:
            return [], {ids[0]: _withheld(reason(exc))}
    half = len(ids) // 2
    rows, failed = _collect(conn, query, ids[:half])
    more_rows, more_failed = _collect(conn, query, ids[half:])
    return rows + more_rows, {**failed, **more_failed}


def _slow(where: str, what: str) -> Finding:
    return Finding(
        f"{where}.query",
        f"{what} ran over statement_timeout_ms: not checked (recomputes of that many ids "
        "would run as long)",
        stops_run=False,
    )


def _more(count: int, n: int, what: str) -> str:
    """After the first of ``count`` ids: how many more, of the ``n`` sampled from ``what``."""
    more = f"and {count - 1} more " if count > 1 else ""
    return f" ({more}of {n} sampled from {what})"


def _others(count: int) -> str:
    return f" (and {count} more)" if count else ""


def _withheld(message: str) -> str:
    return _QUOTED_INPUT.sub(f'"{WITHHELD}"', message)
