"""What changes between two sync definitions, for code review (``reach-sync diff OLD NEW``).

A reviewer needs the consequences, not a text diff: which resources will project differently
(and so be re-synced: the parts are backfill/fingerprint.py's, the same that ``run`` compares),
which triggers come and go, delivery changes, and the few settings that change where state lives
(consumer groups, topics, the last-sent prefix), each said with what it does. Secrets are never
compared or shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from consumer.backfill.fingerprint import parts_of
from consumer.config import Resource, SyncDefinition, Trigger

__all__ = ["Difference", "diff_definitions"]

# Settings whose change moves where reach-sync keeps its state: said with the consequence.
_CONSEQUENCES = {
    "source.kafka.group_id": (
        "new consumer groups: they read the source and dirty topics from their beginning"
    ),
    "topics.dirty": "a new dirty topic: keys still waiting on the old one are not read",
    "topics.scheduled": "a new scheduled topic: keys waiting for a run on the old one are not read",
    "topics.audit": "a new audit topic: `audit why` no longer sees the history on the old one",
    "topics.dead_letter": "a new dead-letter topic: `dlq list` no longer sees the old one",
    "redis.key_prefix": "a fresh last-sent store: every record is sent again",
    "destination.base_url": "another Reach: the last-sent store describes the old one",
    "destination.tenant_id_mode": "reach-tenant-id changes value for every request",
}


@dataclass(frozen=True, slots=True)
class Difference:
    """One change: where in the definition, what it is, and what follows (may be empty)."""

    path: str
    change: str
    consequence: str = ""

    def line(self) -> str:
        text = f"{self.path}: {self.change}"
        return f"{text} ({self.consequence})" if self.consequence else text


def diff_definitions(old: SyncDefinition, new: SyncDefinition) -> list[Difference]:
    """Every difference, resources first (in the new definition's order), then the rest."""
    found: list[Difference] = []
    for name in old.resources.keys() - new.resources.keys():
        found.append(Difference(f"resources.{name}", "removed", "its records stay in Reach"))
    for name, resource in new.resources.items():
        before = old.resources.get(name)
        if before is None:
            found.append(
                Difference(f"resources.{name}", "added", "history reaches Reach by a backfill")
            )
        else:
            found += _resource(name, before, resource, new.resync)
    rest_old, rest_new = _flat(_settings(old)), _flat(_settings(new))
    for path in sorted(rest_old.keys() | rest_new.keys()):
        if rest_old.get(path) != rest_new.get(path):
            change = f"{_shown(rest_old.get(path))} → {_shown(rest_new.get(path))}"
            found.append(Difference(path, change, _CONSEQUENCES.get(path, "")))
    return found


def _resource(name: str, old: Resource, new: Resource, resync: str) -> list[Difference]:
    where = f"resources.{name}"
    found: list[Difference] = []
    before, after = parts_of(old), parts_of(new)
    changed = [part for part in before if before[part] != after[part]]
    if changed:
        how = (
            "re-synced when `run` starts"
            if resync == "auto"
            else "resync: manual, run `reach-sync resync --resource " + name + "`"
        )
        found.append(Difference(where, f"projects differently ({', '.join(changed)})", how))
    found += _mapping(where, old, new)
    found += _groups(where, old, new)
    for part in ("query", "key", "tenant", "reach_schema"):
        if getattr(old, part) != getattr(new, part):
            was, now = getattr(old, part), getattr(new, part)
            change = "changed" if part == "query" else f"{was} → {now}"
            note = "every record is sent again, to the new schema" if part == "reach_schema" else ""
            found.append(Difference(f"{where}.{part}", change, note))
    old_triggers, new_triggers = set(map(_trigger, old.triggers)), set(map(_trigger, new.triggers))
    for trigger in sorted(old_triggers - new_triggers):
        found.append(Difference(f"{where}.triggers", f"removed {trigger}"))
    for trigger in sorted(new_triggers - old_triggers):
        found.append(Difference(f"{where}.triggers", f"added {trigger}"))
    others_old = _flat(old.model_dump(mode="json", include=_OTHER_FIELDS), where)
    others_new = _flat(new.model_dump(mode="json", include=_OTHER_FIELDS), where)
    for path in sorted(others_old.keys() | others_new.keys()):
        if others_old.get(path) != others_new.get(path):
            change = f"{_shown(others_old.get(path))} → {_shown(others_new.get(path))}"
            found.append(Difference(path, change))
    return found


_OTHER_FIELDS = {"delivery", "tenants_query", "audit_values", "backfill"}


def _mapping(where: str, old: Resource, new: Resource) -> list[Difference]:
    found = []
    for field in old.mapping.keys() - new.mapping.keys():
        found.append(Difference(f"{where}.mapping.{field}", "removed", "Reach keeps its value"))
    for field, mapping in new.mapping.items():
        was = old.mapping.get(field)
        now = f"column {mapping.column}, format {mapping.format}, pii {mapping.pii}"
        if was is None:
            found.append(Difference(f"{where}.mapping.{field}", f"added ({now})"))
        elif was != mapping:
            then = f"column {was.column}, format {was.format}, pii {was.pii}"
            found.append(Difference(f"{where}.mapping.{field}", f"{then} → {now}"))
    return found


def _groups(where: str, old: Resource, new: Resource) -> list[Difference]:
    if old.groups == new.groups:
        return []
    if old.groups is None or new.groups is None:
        change = "added" if old.groups is None else "removed"
        return [Difference(f"{where}.groups", change)]
    found = []
    if old.groups.field != new.groups.field:
        change = f"{old.groups.field} → {new.groups.field}"
        found.append(Difference(f"{where}.groups.field", change))
    before = {rule.name: rule.when for rule in old.groups.rules}
    after = {rule.name: rule.when for rule in new.groups.rules}
    for rule in sorted(before.keys() | after.keys()):
        if before.get(rule) != after.get(rule):
            change = f"{_shown(before.get(rule))} → {_shown(after.get(rule))}"
            found.append(Difference(f"{where}.groups.rules.{rule}", change))
    return found


def _trigger(trigger: Trigger) -> str:
    text = f"{trigger.table} (id {trigger.id}, replica_identity {trigger.replica_identity}"
    return text + (", with a lookup)" if trigger.lookup is not None else ")")


def _settings(definition: SyncDefinition) -> dict[str, Any]:
    """Everything but the resources; secrets are dumped masked, so they never differ."""
    return definition.model_dump(mode="json", exclude={"resources"})


def _flat(node: Any, path: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flat(value, f"{path}.{key}" if path else str(key)))
        return flat
    return {path: node}


def _shown(value: Any) -> str:
    return "(none)" if value is None else str(value)
