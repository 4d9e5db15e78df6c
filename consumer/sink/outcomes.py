"""What is about to leave for Reach (``Sending``, ``Deleting``: announced before the request is
made) and what Reach did with it: one record taken (``Sent``), one entity deleted
(``Removed``). Delivery reports them; the audit records them, with the window's causes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consumer.router.dirty import Cause
from consumer.sink.projection import Projected

__all__ = ["Deleting", "Removed", "Sending", "Sent"]


@dataclass(frozen=True, slots=True)
class Sent:
    """One record Reach took: ``projected`` as sent, when (epoch ms: Reach answered the single
    write, or its batch was seen finished), the batch it was in (None: a single write), and
    whether Reach parked it on a missing ``$ref`` (accepted, but sent again next time).
    ``unconfirmed``: it was sent and the answer was lost, so Reach may or may not have it
    (``in_batch``: it went through the batch endpoint, whose id the lost answer carried).
    ``causes``: why the entity was recomputed (the window's triggers, oldest first), once known."""

    projected: Projected
    at_ms: int
    batch_id: str | None = None
    parked: bool = False
    unconfirmed: bool = False
    in_batch: bool = False
    causes: Sequence[Cause] = ()


@dataclass(frozen=True, slots=True)
class Removed:
    """One entity Reach deleted from ``tenant``: when its batch was seen finished, and which;
    ``unconfirmed`` (no batch id): the delete was sent and its answer was lost."""

    tenant: str
    external_id: str
    at_ms: int
    batch_id: str | None
    unconfirmed: bool = False
    causes: Sequence[Cause] = ()


@dataclass(frozen=True, slots=True)
class Sending:
    """One record about to leave for Reach, announced before the request that carries it is
    made (the audit's write-ahead ``sending`` record): ``projected`` as it will be sent, when it
    was announced (epoch ms), and whether it goes through the batch endpoint (``in_batch``) or
    as a single write. Not an outcome: Reach may apply it or not, and nothing is remembered
    because of it. ``causes`` as for ``Sent``."""

    projected: Projected
    at_ms: int
    in_batch: bool = False
    causes: Sequence[Cause] = ()


@dataclass(frozen=True, slots=True)
class Deleting:
    """One entity about to be deleted from ``tenant``, announced before the delete request is
    made (like ``Sending``)."""

    tenant: str
    external_id: str
    at_ms: int
    causes: Sequence[Cause] = ()
