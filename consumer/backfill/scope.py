"""What one backfill covers, and the id its checkpoint is kept under.

The same command line, run again, must find the same checkpoint (that is how a killed backfill
resumes), and a different one must not: so the id is a hash of everything that decides which
entities are walked: the kind, the resources, the tenants, ``--where``, ``--since``, and for a
resync the definition fingerprint it brings Reach up to.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from consumer.config import SyncDefinition
from consumer.errors import ConfigurationError

__all__ = ["BackfillScope", "Kind"]

Kind = Literal["backfill", "resync"]


@dataclass(frozen=True, slots=True)
class BackfillScope:
    """Resources in definition order; an empty ``tenants`` means every tenant."""

    kind: Kind
    resources: tuple[str, ...]
    tenants: tuple[str, ...] = ()
    where: str | None = None
    since_ms: int | None = None
    # resync only: the fingerprint of each resource the resync brings Reach up to.
    fingerprints: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        definition: SyncDefinition,
        kind: Kind,
        resources: tuple[str, ...] = (),
        tenants: tuple[str, ...] = (),
        where: str | None = None,
        since_ms: int | None = None,
        fingerprints: tuple[tuple[str, str], ...] = (),
    ) -> BackfillScope:
        """Check the names against the definition: an unknown resource, or ``--since`` on a
        resource without ``backfill.since_column``, is a ConfigurationError naming it."""
        known = list(definition.resources)
        unknown = [r for r in resources if r not in definition.resources]
        if unknown:
            raise ConfigurationError(
                f"no resource {', '.join(unknown)} in the definition (it has {', '.join(known)})"
            )
        chosen = tuple(r for r in known if not resources or r in resources)
        if since_ms is not None:
            without = [r for r in chosen if definition.resources[r].backfill.since_column is None]
            if without:
                raise ConfigurationError(
                    f"--since needs backfill.since_column on {', '.join(without)}"
                )
        if where is not None and not where.strip():
            raise ConfigurationError("--where is empty")
        return cls(kind, chosen, tuple(sorted(set(tenants))), where, since_ms, fingerprints)

    @property
    def filtered(self) -> bool:
        """Whether ids are checked against the resource query (tenant, where, since)."""
        return bool(self.tenants) or self.where is not None or self.since_ms is not None

    @property
    def id(self) -> str:
        canonical = json.dumps(
            {
                "kind": self.kind,
                "resources": list(self.resources),
                "tenants": list(self.tenants),
                "where": self.where,
                "since_ms": self.since_ms,
                "fingerprints": [list(f) for f in self.fingerprints],
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def describe(self) -> str:
        parts = [f"{self.kind} of {', '.join(self.resources)}"]
        if self.tenants:
            parts.append(f"tenant {', '.join(self.tenants)}")
        if self.where is not None:
            parts.append(f"where {self.where}")
        if self.since_ms is not None:
            parts.append(f"since {self.since_ms} ms")
        return "; ".join(parts)
