"""Dirty keys: the one record that connects stage 1 (router) to stage 2 (syncer).

A dirty key says "entity ``id`` of ``resource`` may have changed, because of ``cause``". It is
keyed ``resource/id`` on the dirty topic, so every trigger of one entity, from any source topic
or partition, lands in one partition and has one owner at a time: that is what serializes an
entity's sends (docs/design.md, "Why two stages"). Its JSON shape is
``schemas/dirty-key.schema.json``.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "MAX_CAUSES",
    "Cause",
    "DirtyKey",
    "decode_dirty",
    "dirty_message_key",
    "encode_dirty",
]

EntityId = int | str

# Causes kept per entity (on a dirty key, and per window) for the audit record; a hot entity can
# be triggered thousands of times, and the first few say why as well as all of them would.
MAX_CAUSES = 8


class Cause(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """Where the trigger came from: enough to find the source event and to audit the send.

    Untracked by the garbage collector (``gc=False``), as ``DirtyKey``: frozen and holding only
    scalars (a DirtyKey: causes), neither can be part of a reference cycle, and a backlog makes
    and holds hundreds of thousands of them, which the collector would otherwise count and walk.
    """

    kind: str  # "cdc" for a change event; "backfill", "replay", "resync" for the others
    table: str | None = None
    op: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    source_ts_ms: int | None = None
    lsn: int | None = None
    # The source event's Kafka timestamp (epoch ms; its producer's time unless the topic keeps
    # the broker's, LogAppendTime): where reach-sync's own share of the latency starts.
    appended_ms: int | None = None
    # The W3C ``traceparent`` Kafka header of the source event, when its producer set one: the
    # syncer's window span links to it (spans.py). Omitted when None, as every default is.
    traceparent: str | None = None
    # The backfill or resync run that made the entity dirty (backfill/run.py), so that its
    # summary can find its keys' outcomes in the audit and dead-letter topics.
    run: str | None = None


class DirtyKey(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """``cause`` is the earliest trigger. The router merges the triggers of one entity within
    one batch into one key: ``triggers`` says how many, ``later_causes`` keeps the next few."""

    resource: str
    id: EntityId
    cause: Cause
    enqueued_ms: int = 0
    triggers: int = 1
    later_causes: tuple[Cause, ...] = ()

    def causes(self) -> tuple[Cause, ...]:
        return (self.cause, *self.later_causes)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DirtyKey)


def dirty_message_key(resource: str, entity_id: EntityId) -> bytes:
    """The Kafka key: one entity, one partition of the dirty topic."""
    return f"{resource}/{entity_id}".encode()


def encode_dirty(key: DirtyKey) -> bytes:
    return _encoder.encode(key)


def decode_dirty(raw: bytes) -> DirtyKey:
    """Raise msgspec.DecodeError/ValidationError on anything that is not a dirty key."""
    return _decoder.decode(raw)
