"""What the syncer knows about Reach, for readiness: the circuit, the tenants Reach refuses (with
the entities held for each) and the partitions a configuration error stalls."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from consumer.reach.breaker import Circuit
from consumer.sink.tenant_gate import TenantBlocks
from consumer.syncer.partitions import Partition

__all__ = ["BlockedTenant", "Health", "health_of"]


@dataclass(frozen=True, slots=True)
class BlockedTenant:
    since: float  # epoch seconds
    error: str
    probes: int
    held: int  # entities held for it in this process


@dataclass(frozen=True, slots=True)
class Health:
    """What the syncer knows about Reach, for readiness (health.py decides from it): the
    circuit (anything but "closed" means Reach is failing), the tenants Reach refuses, and the
    partitions whose window a configuration error of every tenant fails. The consumer stays in
    its group whatever this says."""

    circuit: str
    blocked: dict[str, BlockedTenant]
    stalled: dict[int, str]


def health_of(
    parts: Sequence[tuple[int, Partition]], blocks: TenantBlocks, circuit: Circuit | None
) -> Health:
    """From copies of what the loop and the rebalance callbacks change: safe from any thread."""
    held = sum((p.held.by_tenant() for _, p in parts), Counter[str]())
    blocked = {
        tenant: BlockedTenant(block.since, str(block.error), block.probes, held[tenant])
        for tenant, block in blocks.snapshot().items()
    }
    stalled = {n: str(p.stalled) for n, p in parts if p.stalled}
    return Health("closed" if circuit is None else circuit.state.value, blocked, stalled)
