"""Tenants Reach refuses (401/403): which are blocked, and when one request may probe again.

No record of a refused tenant can succeed until a person fixes it, and retrying would only
hammer Reach, so delivery asks this gate first: ``open`` (send), ``closed`` (send nothing: the
syncer holds the records) or ``probe`` (one record, one request). A refused probe doubles the
wait, up to a cap; an accepted one unblocks the tenant. One gate per process (every partition
carries every tenant), at most one probe per tenant in flight. Which errors block is decided
here, once: 401, 403 and an unusable tenant name; configuration errors of another scope fail
their window instead. The long story: docs/design.md, "Refused tenants: held entities and blocks".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeGuard

from consumer.config import TenantProbe
from consumer.errors import ConfigurationError, Retryable, SyncError

__all__ = [
    "OPEN",
    "PROBE",
    "Admission",
    "AlwaysOpen",
    "Attempt",
    "Block",
    "Closed",
    "TenantBlocks",
    "TenantGate",
    "blocks_tenant",
    "first_error",
    "through_gate",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def blocks_tenant(error: SyncError | None) -> TypeGuard[ConfigurationError]:
    """Whether ``error`` means Reach refuses one tenant (see the module docstring)."""
    return isinstance(error, ConfigurationError) and (
        error.status in (401, 403) or error.scope == "tenant"
    )


@dataclass(frozen=True, slots=True)
class Admission:
    """A tenant's records may go: all of them, or, for a ``probe``, one request's worth."""

    probe: bool = False


@dataclass(frozen=True, slots=True)
class Closed:
    """Nothing of a tenant may go: Reach refused it with ``error``, and no probe is due."""

    error: ConfigurationError


OPEN = Admission()
PROBE = Admission(probe=True)


@dataclass(slots=True)
class Block:
    """One blocked tenant: why, since when (epoch seconds, for people), and its probes."""

    error: ConfigurationError
    since: float
    probe_at: float  # monotonic
    probes: int = 0
    probing: bool = False


class TenantBlocks:
    """The gate delivery asks (``admit``, then ``report``) and the syncer reads."""

    def __init__(
        self,
        settings: TenantProbe,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._wall_clock = wall_clock
        self._blocks: dict[str, Block] = {}

    # --- delivery's side -------------------------------------------------------------------------

    def admit(self, tenant: str) -> Admission | Closed:
        """Open, or the one probe when it is due and none is in flight, or closed."""
        block = self._blocks.get(tenant)
        if block is None:
            return OPEN
        if block.probing or self._clock() < block.probe_at:
            return Closed(block.error)
        block.probing = True
        return PROBE

    def report(self, tenant: str, admission: Admission, error: SyncError | None) -> None:
        """The outcome of a request ``admit`` let go: ``None`` when Reach took it (a refusal
        of a record counts: the tenant was accepted), else the error it ended with."""
        if admission.probe:
            self._probed(tenant, error)
        elif blocks_tenant(error) and tenant not in self._blocks:
            self._block(tenant, error)

    # --- the syncer's side -----------------------------------------------------------------------

    def is_blocked(self, tenant: str) -> bool:
        return tenant in self._blocks

    def due(self) -> list[str]:
        """Blocked tenants whose probe is due and not in flight."""
        now = self._clock()
        return [t for t, b in self._blocks.items() if not b.probing and now >= b.probe_at]

    def snapshot(self) -> dict[str, Block]:
        return dict(self._blocks)

    # --- transitions -----------------------------------------------------------------------------

    def _block(self, tenant: str, error: ConfigurationError) -> None:
        interval = self._settings.interval_s
        self._blocks[tenant] = Block(error, self._wall_clock(), self._clock() + interval)
        log.error(
            "tenant %s blocked: %s. Nothing of it is sent, committed past or dead-lettered until"
            " Reach accepts it again; one probe request in %.0f s",
            tenant,
            error,
            interval,
        )

    def _probed(self, tenant: str, error: SyncError | None) -> None:
        block = self._blocks.get(tenant)
        if block is None:
            return
        block.probing = False
        if error is None:
            del self._blocks[tenant]
            log.warning(
                "tenant %s unblocked: Reach accepted it again after %.0f s and %d probes",
                tenant,
                self._wall_clock() - block.since,
                block.probes + 1,
            )
            return
        if blocks_tenant(error):
            block.probes += 1
            block.error = error
        wait = min(self._settings.max_interval_s, self._settings.interval_s * 2**block.probes)
        block.probe_at = self._clock() + wait
        log.info("tenant %s still blocked (%s); next probe in %.0f s", tenant, error, wait)


# --- sending through the gate ---------------------------------------------------------------


class TenantGate(Protocol):
    """Whether a tenant's records may go now, and what became of those that went
    (``TenantBlocks``)."""

    def admit(self, tenant: str) -> Admission | Closed: ...

    def report(self, tenant: str, admission: Admission, error: SyncError | None) -> None: ...


class AlwaysOpen:
    """The gate of a caller that keeps no blocks: every tenant may always send."""

    def admit(self, tenant: str) -> Admission | Closed:
        return OPEN

    def report(self, tenant: str, admission: Admission, error: SyncError | None) -> None:
        return None


@dataclass(slots=True)
class Attempt:
    """How one tenant's request(s) ended: the error that stopped them (None: every record
    reached an outcome), and the keys that reached none (neither accepted nor dead-lettered)."""

    error: SyncError | None = None
    unsettled: list[str] = field(default_factory=list)


# What the gate hears about a request that never finished (cancelled): nothing was learned.
_INTERRUPTED = Retryable("the request was interrupted")


async def through_gate(
    gate: TenantGate,
    tenant: str,
    keys: list[str],
    send: Callable[[list[str]], Awaitable[Attempt]],
    hold: Callable[[str, list[str], ConfigurationError], None],
) -> SyncError | None:
    """Send one tenant's ``keys`` as its gate allows: all of them (open), none (closed), or
    one (the probe), the rest following once Reach took it. What a refusal of the tenant stops
    is held; any other error is returned, for the window to retry."""
    admission = gate.admit(tenant)
    if isinstance(admission, Closed):
        hold(tenant, keys, admission.error)
        return None
    now, later = (keys[:1], keys[1:]) if admission.probe else (keys, [])
    try:
        attempt = await send(now)
    except BaseException:
        gate.report(tenant, admission, _INTERRUPTED)
        raise
    gate.report(tenant, admission, attempt.error)
    if blocks_tenant(attempt.error):
        hold(tenant, [*attempt.unsettled, *later], attempt.error)
        return None
    if attempt.error is not None or not later:
        return attempt.error
    return await through_gate(gate, tenant, later, send, hold)


def first_error(errors: Sequence[SyncError]) -> SyncError | None:
    """The error that decides a tenant's outcome: a refusal of the tenant, else the first."""
    return next((e for e in errors if blocks_tenant(e)), errors[0] if errors else None)
