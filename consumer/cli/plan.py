"""``reach-sync plan``: what a change to one row would make dirty, without Kafka.

It answers the question a person writing triggers asks ("if this transaction moves to customer
8, who is recomputed?") with the router's own planning code, so the answer cannot drift from
what the router does. A trigger with a lookup (fan-out) can only be answered by the source
database, so for those, and only those, plan runs the lookup there, read-only, as the router
would; a definition without lookups on the table is planned without any database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.config import DatabaseSource, SyncDefinition
from consumer.router.debezium import Change, Op
from consumer.router.dirty import EntityId
from consumer.router.lookups import LookupDatabase, lookup_scope, lookup_triggers
from consumer.router.triggers import DirtyEntity, TriggerIndex, plan_change

__all__ = ["LookedUp", "Plan", "describe_plan", "plan_command"]

_OPS: tuple[Op, ...] = ("c", "u", "d", "r")


@dataclass(frozen=True)
class LookedUp:
    """One lookup trigger run for the planned row: its inputs and the entity ids it found."""

    resource: str
    trigger: int
    inputs: list[str]
    found: list[EntityId]

    @property
    def scope(self) -> str:
        return lookup_scope(self.resource, self.trigger)


@dataclass(frozen=True)
class Plan:
    """The entities a change makes dirty directly, and what its lookup triggers found."""

    entities: list[DirtyEntity]
    lookups: list[LookedUp] = field(default_factory=list)


def plan_command(
    definition: SyncDefinition,
    table: str,
    row: Mapping[str, Any],
    op: str = "u",
    before: Mapping[str, Any] | None = None,
    key_columns: Sequence[str] = ("id",),
    database: Callable[[DatabaseSource], LookupDatabase] = LookupDatabase,
) -> Plan:
    """What a change of ``row`` in ``table`` makes dirty.

    ``row`` is the row as Debezium would show it: the after image for ``c``, ``u`` and ``r``,
    the deleted row for ``d``. ``before`` is an update's before image (read only for triggers
    with ``replica_identity: full``). The event key is ``key_columns`` of ``row``, as Debezium
    keys a table by its primary key. Raises ValueError for an unknown op or a missing key
    column, and consumer.router.triggers.UnknownTable for a table no trigger names. Lookup
    triggers with inputs are run on ``database`` (the source database by default); a failing
    one raises Retryable with the database's message.
    """
    change_op = _op(op)
    missing = [column for column in key_columns if column not in row]
    if missing:
        raise ValueError(f"the row has no key column {', '.join(missing)}")
    change = Change(
        table=table,
        op=change_op,
        key={column: row[column] for column in key_columns},
        before=dict(row) if change_op == "d" else _image(before),
        after=None if change_op == "d" else dict(row),
        source_ts_ms=None,
        lsn=None,
    )
    entities, inputs = plan_change(change, TriggerIndex.from_definition(definition))
    if not inputs:
        return Plan(entities)
    by_trigger: dict[tuple[str, int], list[str]] = {}
    for looked in inputs:
        by_trigger.setdefault((looked.resource, looked.trigger), []).append(looked.value)
    return Plan(entities, _look_up(definition, by_trigger, database))


def _look_up(
    definition: SyncDefinition,
    by_trigger: Mapping[tuple[str, int], list[str]],
    database: Callable[[DatabaseSource], LookupDatabase],
) -> list[LookedUp]:
    """Each lookup trigger's entities for its inputs, on one connection closed afterwards."""
    lookups = {key: t.lookup for key, t in lookup_triggers(definition).items() if t.lookup}
    db = database(definition.source.database)
    found: list[LookedUp] = []
    try:
        for (resource, position), ids in by_trigger.items():
            entities = db.look_up(resource, position, lookups[(resource, position)], ids)
            found.append(LookedUp(resource, position, ids, [e.entity_id for e in entities]))
    finally:
        db.close()
    return found


def describe_plan(table: str, op: str, plan: Plan) -> str:
    """One line per dirty entity (a looked-up one says which lookup of which ids found it),
    one per lookup that found nothing, or why nothing is dirty; what the CLI prints."""
    lines = [f"{op} on {table}: {entity}" for entity in plan.entities]
    for looked in plan.lookups:
        via = f"the lookup {looked.scope} with ids {', '.join(looked.inputs)}"
        if not looked.found:
            lines.append(f"{op} on {table}: {via} finds nothing")
        lines += [f"{op} on {table}: {looked.resource}/{i} (via {via})" for i in looked.found]
    return "\n".join(lines) or f"{op} on {table}: makes nothing dirty"


def _op(op: str) -> Op:
    for known in _OPS:
        if op == known:
            return known
    raise ValueError(f"op must be one of {', '.join(_OPS)}, not {op!r}")


def _image(image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if image is None else dict(image)
