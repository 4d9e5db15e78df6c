"""A step's observations held to its expectations: every difference, as a readable diff.

A resource named in ``expect`` is held exactly: an entity of it sent, deleted, dead-lettered,
held or parked without being expected is a failure too (unchanged entities of earlier steps are
recomputed and skipped every step, so ``skipped`` is only checked where it is expected).
"""

from __future__ import annotations

import difflib
from decimal import Decimal
from typing import Any

import orjson

from consumer.config import SyncDefinition
from consumer.definition_tests.cases import Expectation, Step
from consumer.definition_tests.observed import Observations, Observed

__all__ = ["differences"]


def _exact(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(format(value, "f"))
    raise TypeError(type(value).__name__)


def _json(value: Any) -> list[str]:
    text = orjson.dumps(value, default=_exact, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return text.decode().splitlines()


def same(expected: Any, received: Any) -> bool:
    """JSON equality: numbers by value (0.30 is 0.3), but a boolean is not a number and a
    number is not a string."""
    if isinstance(expected, bool) or isinstance(received, bool):
        return type(expected) is type(received) and expected == received
    numbers = (int, float, Decimal)
    if isinstance(expected, numbers) and isinstance(received, numbers):
        return Decimal(str(expected)) == Decimal(str(received))
    if isinstance(expected, dict) and isinstance(received, dict):
        return expected.keys() == received.keys() and all(
            same(v, received[k]) for k, v in expected.items()
        )
    if isinstance(expected, list) and isinstance(received, list):
        return len(expected) == len(received) and all(map(same, expected, received))
    return type(expected) is type(received) and expected == received


def _diff(expected: Any, actual: Any) -> list[str]:
    lines = difflib.unified_diff(
        _json(expected), _json(actual), "expected", "received", lineterm="", n=2
    )
    return ["    " + line for line in lines]


def _aligned(expected: dict[str, Any], received: dict[str, Any]) -> dict[str, Any]:
    """``received``, with each value equal to the expected one written as expected (0.3 as
    0.30), so the diff shows only what differs."""
    return {
        k: expected[k] if k in expected and same(expected[k], v) else v for k, v in received.items()
    }


def _record(expect: Expectation, seen: Observed, groups_field: str | None) -> list[str]:
    record = seen.record or {}
    problems = []
    if expect.record is not None and not same(expect.record, record):
        problems += [
            "  the record differs:",
            *_diff(expect.record, _aligned(expect.record, record)),
        ]
    if expect.fields is not None:
        missing = [name for name in expect.fields if name not in record]
        if missing:
            problems.append(f"  not in the record: {', '.join(missing)}")
        differing = [k for k, v in expect.fields.items() if k in record and not same(v, record[k])]
        if differing:
            wanted = {k: expect.fields[k] for k in differing}
            problems += ["  fields differ:", *_diff(wanted, {k: record[k] for k in differing})]
    if expect.groups is not None:
        if groups_field is None:
            problems.append("  groups expected, but the resource has no groups")
        else:
            got = sorted(record.get(groups_field) or [])
            if sorted(expect.groups) != got:
                problems.append(f"  groups: expected {sorted(expect.groups)}, got {got}")
    return problems


def _one(
    expect: Expectation, seen: Observed | None, groups_field: str | None, e2e: bool
) -> list[str]:
    if seen is None and e2e:
        # The pipeline records what it sent, deleted or dead-lettered; nothing is a skip.
        seen = Observed("skipped", reason="no outcome: unchanged, or never made dirty")
    if seen is None:
        return [f"  expected {expect.outcome}, but nothing was recomputed for it (no row)"]
    if seen.outcome != expect.outcome:
        why = f" ({seen.reason})" if seen.reason else ""
        return [f"  expected {expect.outcome}, got {seen.outcome}{why}"]
    if expect.tenant is not None and expect.tenant != seen.tenant:
        return [f"  {seen.outcome} for tenant {seen.tenant}, expected tenant {expect.tenant}"]
    if expect.reason is not None and expect.reason not in (seen.reason or ""):
        return [f"  dead-lettered, but the reason does not say {expect.reason!r}: {seen.reason}"]
    return _record(expect, seen, groups_field)


def differences(
    definition: SyncDefinition, step: Step, observed: Observations, *, e2e: bool = False
) -> list[str]:
    """Every way ``observed`` differs from ``step.expect``; empty when the step passes.
    ``e2e``: observed from the pipeline's records, where an entity without any was skipped."""
    problems: list[str] = []
    for name, expected in step.expect.items():
        resource = definition.resources.get(name)
        if resource is None:
            problems.append(f"{name}: the definition has no such resource")
            continue
        groups_field = resource.groups.field if resource.groups is not None else None
        seen = observed.get(name, {})
        for entity_id, expect in expected.items():
            found = _one(expect, seen.get(entity_id), groups_field, e2e)
            if found:
                problems += [f"{name} {entity_id}:", *found]
        for entity_id, what in sorted(seen.items()):
            if entity_id not in expected and what.outcome != "skipped":
                detail = f": {what.reason}" if what.reason else ""
                problems.append(f"{name} {entity_id}: {what.outcome}, not expected{detail}")
    return problems
