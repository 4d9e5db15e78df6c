"""PII fields masked in what a command prints (``preview``, ``sample``): a terminal, a ticket or a
chat is no place for a ``pii: send`` value or even a ``pii: hash`` one (a hash of an email is
found again by hashing guesses). ``--show-pii`` prints them."""

from __future__ import annotations

from typing import Any

from consumer.config import SyncDefinition

__all__ = ["PII_MASK", "masked"]

PII_MASK = "<pii>"


def masked(definition: SyncDefinition, resource: str, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the value of each PII field (``pii: send`` or ``hash``) replaced by
    PII_MASK; a null stays null (that it is empty tells nothing)."""
    mapping = definition.resources[resource].mapping
    return {
        name: PII_MASK
        if name in mapping and mapping[name].pii != "none" and value is not None
        else value
        for name, value in record.items()
    }
