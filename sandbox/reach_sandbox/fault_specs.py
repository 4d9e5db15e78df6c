"""The shapes of injectable faults, shared by the config file and the admin API.

One discriminated union keyed by ``kind``: a mistyped field in a fault is a 400 (admin API) or a
config error, never a fault that silently does nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

__all__ = [
    "BatchDelayFault",
    "ErrorFault",
    "FaultSpec",
    "LatencyFault",
    "RateLimitStormFault",
    "RecordFailureFault",
    "RevokeFault",
    "TimeoutFault",
    "fault_adapter",
]


class _FaultBase(BaseModel):
    """Scope and firing rules common to every fault.

    ``tenant`` matches a tenant's Reach id or its external id; ``path_prefix`` and ``method``
    narrow which requests (or, for batch faults, which batch endpoints) it applies to.
    ``rate`` is the probability that one matching request (or record) is hit; ``count`` caps how
    many times it fires before it removes itself, which makes "the next 3 calls fail" exact.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    tenant: str | None = None
    path_prefix: str | None = None
    method: str | None = None
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    count: int | None = Field(default=None, ge=1)


class ErrorFault(_FaultBase):
    """Answer with ``status``; with ``after_apply`` the request is processed first and its answer
    lost, the case that makes a client retry something that already happened."""

    kind: Literal["error"]
    status: int = Field(default=503, ge=400, le=599)
    message: str = "injected fault"
    after_apply: bool = False
    retry_after_seconds: int | None = Field(default=None, ge=0)


class LatencyFault(_FaultBase):
    """Add ``ms`` (or a uniform draw up to ``max_ms``) before the request is handled."""

    kind: Literal["latency"]
    ms: float = Field(ge=0.0)
    max_ms: float | None = Field(default=None, ge=0.0)

    @model_validator(mode="after")
    def _range(self) -> LatencyFault:
        if self.max_ms is not None and self.max_ms < self.ms:
            raise ValueError("max_ms must be at least ms")
        return self


class TimeoutFault(_FaultBase):
    """Hang for ``seconds``, then answer 504 or, with ``drop``, cut the connection mid-response."""

    kind: Literal["timeout"]
    seconds: float = Field(default=30.0, ge=0.0, le=600.0)
    drop: bool = False


class RateLimitStormFault(_FaultBase):
    """Answer 429 with ``Retry-After: retry_after_seconds`` whatever the real limits say."""

    kind: Literal["rate_limit"]
    retry_after_seconds: int = Field(default=1, ge=0)


class BatchDelayFault(_FaultBase):
    """Hold each matching batch in ``processing`` for ``seconds`` before it is applied."""

    kind: Literal["batch_delay"]
    seconds: float = Field(ge=0.0, le=3600.0)


class RecordFailureFault(_FaultBase):
    """Fail records of asynchronous batches: those with the listed external ids, else at ``rate``.

    ``rate`` and ``count`` apply per record here, not per request.
    """

    kind: Literal["record_failure"]
    external_ids: tuple[str, ...] = ()
    message: str = "injected record failure"


class RevokeFault(_FaultBase):
    """Make a credential answer 401: every JWT of ``partner_id``, or one ``static_key``."""

    kind: Literal["revoke"]
    partner_id: str | None = None
    static_key: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> RevokeFault:
        if (self.partner_id is None) == (self.static_key is None):
            raise ValueError("give exactly one of partner_id or static_key")
        return self


FaultSpec = Annotated[
    ErrorFault
    | LatencyFault
    | TimeoutFault
    | RateLimitStormFault
    | BatchDelayFault
    | RecordFailureFault
    | RevokeFault,
    Field(discriminator="kind"),
]

fault_adapter: TypeAdapter[FaultSpec] = TypeAdapter(FaultSpec)
