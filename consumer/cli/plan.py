"""``reach-sync plan``: what a change to one row would make dirty, without Kafka or a database.

It answers the question a person writing triggers asks ("if this transaction moves to customer
8, who is recomputed?") with the router's own planning code, so the answer cannot drift from
what the router does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from consumer.config import SyncDefinition
from consumer.router.debezium import Change, Op
from consumer.router.triggers import DirtyEntity, TriggerIndex, plan_dirty

__all__ = ["describe_plan", "plan_command"]

_OPS: tuple[Op, ...] = ("c", "u", "d", "r")


def plan_command(
    definition: SyncDefinition,
    table: str,
    row: Mapping[str, Any],
    op: str = "u",
    before: Mapping[str, Any] | None = None,
    key_columns: Sequence[str] = ("id",),
) -> list[DirtyEntity]:
    """The entities a change of ``row`` in ``table`` makes dirty.

    ``row`` is the row as Debezium would show it: the after image for ``c``, ``u`` and ``r``,
    the deleted row for ``d``. ``before`` is an update's before image (read only for triggers
    with ``replica_identity: full``). The event key is ``key_columns`` of ``row``, as Debezium
    keys a table by its primary key. Raises ValueError for an unknown op or a missing key
    column, and consumer.router.triggers.UnknownTable for a table no trigger names.
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
    return plan_dirty(change, TriggerIndex.from_definition(definition))


def describe_plan(table: str, op: str, entities: Sequence[DirtyEntity]) -> str:
    """One line per dirty entity, or why there is none; what the CLI prints."""
    if not entities:
        return f"{op} on {table}: makes nothing dirty"
    return "\n".join(f"{op} on {table}: {entity}" for entity in entities)


def _op(op: str) -> Op:
    for known in _OPS:
        if op == known:
            return known
    raise ValueError(f"op must be one of {', '.join(_OPS)}, not {op!r}")


def _image(image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if image is None else dict(image)
