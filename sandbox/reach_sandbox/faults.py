"""The faults switched on right now, and the decision whether one fires.

Faults are added and removed at run time through the admin API (or start in the config). The
board is read by the request guard on the event loop and by the batch worker on the database
thread (record failures), so its mutable state is under a lock.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from reach_sandbox.auth import Principal, key_credential
from reach_sandbox.fault_specs import (
    BatchDelayFault,
    ErrorFault,
    FaultSpec,
    LatencyFault,
    RateLimitStormFault,
    RecordFailureFault,
    RevokeFault,
    TimeoutFault,
)
from reach_sandbox.registry import Tenant

__all__ = ["ActiveFault", "FaultBoard", "RequestFaults"]


@dataclass(slots=True)
class ActiveFault:
    id: str
    spec: FaultSpec
    created_at: float
    fired: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "fired": self.fired, "spec": self.spec.model_dump(mode="json")}


@dataclass(slots=True)
class RequestFaults:
    """What fired for one request, in the order the guard applies them."""

    latency_s: float = 0.0
    timeout: TimeoutFault | None = None
    storm: RateLimitStormFault | None = None
    error: ErrorFault | None = None
    names: list[str] = field(default_factory=list)


class FaultBoard:
    def __init__(self, specs: Iterable[FaultSpec], seed: int | None) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(seed)  # noqa: S311 - fault draws, not security
        self._faults: dict[str, ActiveFault] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: FaultSpec) -> ActiveFault:
        fault = ActiveFault(uuid.uuid4().hex[:12], spec, time.time())
        with self._lock:
            self._faults[fault.id] = fault
        return fault

    def remove(self, fault_id: str) -> bool:
        with self._lock:
            return self._faults.pop(fault_id, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def snapshot(self) -> list[ActiveFault]:
        with self._lock:
            return list(self._faults.values())

    def for_request(self, tenant: Tenant | None, path: str, method: str) -> RequestFaults:
        fired = RequestFaults()
        for fault in self._firing(
            tenant, path, method, (LatencyFault, TimeoutFault, RateLimitStormFault, ErrorFault)
        ):
            spec = fault.spec
            fired.names.append(f"{spec.kind}:{fault.id}")
            if isinstance(spec, LatencyFault):
                top = spec.ms if spec.max_ms is None else self._random.uniform(spec.ms, spec.max_ms)
                fired.latency_s += top / 1000.0
            elif isinstance(spec, TimeoutFault):
                fired.timeout = fired.timeout or spec
            elif isinstance(spec, RateLimitStormFault):
                fired.storm = fired.storm or spec
            elif isinstance(spec, ErrorFault):
                fired.error = fired.error or spec
        return fired

    def batch_delay(self, tenant: Tenant, path: str) -> float:
        return sum(
            f.spec.seconds
            for f in self._firing(tenant, path, "POST", (BatchDelayFault,), any_method=True)
            if isinstance(f.spec, BatchDelayFault)
        )

    def record_injector(self, tenant: Tenant, path: str) -> Callable[[str], str | None] | None:
        """A per-record decision for one batch, or None when no record-failure fault applies."""
        with self._lock:
            candidates = [
                f
                for f in self._faults.values()
                if isinstance(f.spec, RecordFailureFault) and _scoped(f.spec, tenant, path, None)
            ]
        if not candidates:
            return None

        def inject(external_id: str) -> str | None:
            for fault in candidates:
                spec = fault.spec
                if not isinstance(spec, RecordFailureFault):
                    continue
                listed = external_id in spec.external_ids
                if (listed or not spec.external_ids) and self._fire(fault, check_rate=not listed):
                    return spec.message
            return None

        return inject

    def is_revoked(self, principal: Principal) -> bool:
        with self._lock:
            for fault in self._faults.values():
                spec = fault.spec
                if not isinstance(spec, RevokeFault):
                    continue
                if spec.partner_id is not None:
                    hit = principal.kind != "static_key" and spec.partner_id == principal.partner_id
                else:
                    key = spec.static_key or ""
                    hit = principal.kind == "static_key" and principal.credential == key_credential(
                        key
                    )
                if hit:
                    return True
        return False

    def _firing(
        self,
        tenant: Tenant | None,
        path: str,
        method: str,
        kinds: tuple[type, ...],
        any_method: bool = False,
    ) -> list[ActiveFault]:
        with self._lock:
            matching = [
                f
                for f in self._faults.values()
                if isinstance(f.spec, kinds)
                and _scoped(f.spec, tenant, path, None if any_method else method)
            ]
        return [f for f in matching if self._fire(f)]

    def _fire(self, fault: ActiveFault, check_rate: bool = True) -> bool:
        """Draw against the fault's rate and count one firing; a spent fault removes itself."""
        with self._lock:
            if fault.id not in self._faults:
                return False
            if check_rate and self._random.random() >= fault.spec.rate:
                return False
            fault.fired += 1
            if fault.spec.count is not None and fault.fired >= fault.spec.count:
                del self._faults[fault.id]
            return True


def _scoped(spec: FaultSpec, tenant: Tenant | None, path: str, method: str | None) -> bool:
    if spec.tenant is not None and (
        tenant is None or spec.tenant not in (tenant.id, tenant.external_id)
    ):
        return False
    if spec.path_prefix is not None and not path.startswith(spec.path_prefix):
        return False
    return spec.method is None or method is None or spec.method.upper() == method
