"""What one entity came to in one step of a case, however the step was run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumer.definition_tests.cases import Outcome

__all__ = ["Observations", "Observed"]


@dataclass(frozen=True, slots=True)
class Observed:
    """``record`` is the record as sent (outcome sent or parked); ``reason`` a dead letter's."""

    outcome: Outcome
    record: dict[str, Any] | None = None
    reason: str | None = None
    tenant: str | None = None


# resource -> entity id -> what it came to
Observations = dict[str, dict[str, Observed]]
