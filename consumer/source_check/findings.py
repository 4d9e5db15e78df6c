"""What the source check finds: a place in the definition, why, and whether ``run`` may start."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Finding"]


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem at ``where`` (a definition path, e.g. ``resources.orders.key``).

    ``stops_run``: whether ``run`` refuses to start on it. A finding about the definition does;
    one about some rows of the data does not (``run`` dead-letters those records and goes on
    with the others), and ``validate --source`` reports it all the same.
    """

    where: str
    reason: str
    stops_run: bool = True

    @property
    def line(self) -> str:
        """``path: reason``, as DefinitionError places it in the file."""
        said = self.reason if self.stops_run else f"{self.reason} (this does not stop run)"
        return f"{self.where}: {said}"
