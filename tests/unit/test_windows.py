"""Windows: one entry per entity, closed by age or size, merged for retries."""

from __future__ import annotations

from consumer.records.deadletter import DeadLetterEvent
from consumer.router.dirty import MAX_CAUSES, Cause, DirtyKey, decode_dirty, encode_dirty
from consumer.syncer.windows import CAUSE_BYTES, ENTITY_BYTES, Window


def _key(resource: str, entity_id: int, offset: int) -> DirtyKey:
    return DirtyKey(resource, entity_id, Cause(kind="cdc", offset=offset, op="u"))


def test_many_triggers_of_one_entity_coalesce() -> None:
    window = Window(opened_at=0.0, due_after_s=600)
    for offset in range(100):
        window.add(_key("customers", 7, offset), offset, window_s=0.5)
    window.add(_key("transactions", 7, 100), 100, window_s=0.1)

    assert len(window) == 2
    assert window.received == 101
    assert window.end_offset == 100
    assert window.by_resource() == {"customers": [7], "transactions": [7]}
    assert len(window.causes[("customers", "7")]) == MAX_CAUSES
    assert window.first_cause("customers", "7").offset == 0


def test_a_window_closes_by_its_shortest_resource_age_or_by_size() -> None:
    window = Window(opened_at=10.0, due_after_s=600)
    window.add(_key("customers", 1, 0), 0, window_s=0.5)
    assert not window.due(10.4, max_keys=1000)
    assert window.due(10.5, max_keys=1000)
    window.add(_key("transactions", 2, 1), 1, window_s=0.1)
    assert window.due(10.15, max_keys=1000)
    assert window.due(10.0, max_keys=2)


def _letter(offset: int) -> DeadLetterEvent:
    return DeadLetterEvent(
        b"k", b"not a key", (), "t.dirty", 0, offset, None, "bad", "DecodeError", "syncer"
    )


def test_a_window_of_only_dead_lettered_offsets_is_due_at_once() -> None:
    window = Window(opened_at=0.0, due_after_s=600)
    window.cover(41, _letter(41))
    assert window.due(0.0, max_keys=1000)
    assert window.end_offset == 41 and len(window) == 0
    assert window.dead_letters == [_letter(41)] and window.size == len(b"k" + b"not a key")


def test_a_retried_window_keeps_the_dead_letters_of_the_window_it_absorbs() -> None:
    failed = Window(opened_at=0.0, due_after_s=600)
    failed.cover(3, _letter(3))
    later = Window(opened_at=1.0, due_after_s=600)
    later.cover(8, _letter(8))
    failed.absorb(later)
    assert [letter.offset for letter in failed.dead_letters] == [3, 8]
    assert failed.end_offset == 8


def test_absorbing_a_later_window_keeps_every_entity_and_the_last_offset() -> None:
    failed = Window(opened_at=0.0, due_after_s=600)
    failed.add(_key("customers", 1, 5), 5, window_s=0.5)
    later = Window(opened_at=1.0, due_after_s=600)
    later.add(_key("customers", 1, 9), 9, window_s=0.5)
    later.add(_key("customers", 2, 12), 12, window_s=0.5)
    failed.absorb(later)
    assert sorted(failed.by_resource()["customers"]) == [1, 2]
    assert failed.end_offset == 12
    assert failed.received == 3
    assert [c.offset for c in failed.causes[("customers", "1")]] == [5, 9]


def test_a_merged_key_counts_every_trigger_and_keeps_its_causes() -> None:
    first = Cause(kind="cdc", offset=1)
    later = tuple(Cause(kind="cdc", offset=n) for n in range(2, 9))
    window = Window(opened_at=0.0, due_after_s=1.0)
    window.add(DirtyKey("customers", 7, first, triggers=30, later_causes=later), 5, 1.0)
    window.add(DirtyKey("customers", 7, Cause(kind="cdc", offset=99)), 6, 1.0)
    assert window.received == 31 and len(window) == 1
    assert window.causes[("customers", "7")] == [first, *later]


def test_each_entity_keeps_the_first_offset_that_carried_it_and_a_readded_one_its_own() -> None:
    window = Window(opened_at=0.0, due_after_s=600)
    window.add(_key("customers", 1, 20), 20, window_s=0.5)
    window.add(_key("customers", 1, 21), 21, window_s=0.5)
    later = Window(opened_at=1.0, due_after_s=600)
    later.add(_key("customers", 2, 22), 22, window_s=0.5)
    window.absorb(later)
    held_cause = Cause(kind="cdc", offset=3)
    window.readd(("customers", "1"), 1, [held_cause], 3, window_s=0.1)
    window.readd(("transactions", "9"), 9, [held_cause], 5, window_s=0.1)

    assert window.offsets == {
        ("customers", "1"): 3,
        ("customers", "2"): 22,
        ("transactions", "9"): 5,
    }
    assert window.end_offset == 22  # held offsets lie behind the window's end
    assert window.first_cause("customers", "1") == held_cause
    assert window.resources == {"customers", "transactions"}
    assert window.due(0.1, max_keys=1000)


def test_size_estimates_memory_per_entity_and_per_cause_kept() -> None:
    window = Window(opened_at=0.0, due_after_s=1.0)
    window.add(_key("customers", 1, 10), 10, 1.0)
    assert window.size == ENTITY_BYTES + CAUSE_BYTES
    window.add(_key("customers", 1, 11), 11, 1.0)  # the same entity: one more cause only
    assert window.size == ENTITY_BYTES + 2 * CAUSE_BYTES
    for offset in range(12, 12 + 2 * MAX_CAUSES):  # causes beyond MAX_CAUSES are not kept
        window.add(_key("customers", 1, offset), offset, 1.0)
    assert window.size == ENTITY_BYTES + MAX_CAUSES * CAUSE_BYTES
    later = Window(opened_at=0.0, due_after_s=1.0)
    later.add(_key("customers", 2, 40), 40, 1.0)
    window.absorb(later)
    assert window.size == 2 * ENTITY_BYTES + (MAX_CAUSES + 1) * CAUSE_BYTES


def test_kept_causes_share_their_repeated_text_across_keys_and_windows() -> None:
    # Decoding makes new strings for each key; a backlog holds tens of thousands of causes.
    def decoded(entity_id: int, offset: int) -> DirtyKey:
        cause = Cause(kind="cdc", table="public.customers", op="u", topic="shop.public.c")
        later = (Cause(kind="cdc", table="public.customers", op="d", topic="shop.public.c"),)
        key = DirtyKey("customers", entity_id, cause, triggers=2, later_causes=later)
        return decode_dirty(encode_dirty(key))

    first, second = Window(opened_at=0.0, due_after_s=1.0), Window(opened_at=0.0, due_after_s=1.0)
    first.add(decoded(1, 10), 10, 1.0)
    second.add(decoded(2, 11), 11, 1.0)
    kept = [*first.causes[("customers", "1")], *second.causes[("customers", "2")]]
    assert [(c.kind, c.table, c.op, c.topic) for c in kept] == [
        ("cdc", "public.customers", "u", "shop.public.c"),
        ("cdc", "public.customers", "d", "shop.public.c"),
    ] * 2
    for field in ("kind", "table", "topic"):
        assert len({id(getattr(c, field)) for c in kept}) == 1, field
    assert kept[0].op is kept[2].op
    assert next(iter(first.ids))[0] is next(iter(second.ids))[0]  # the resource's name


def test_latency_runs_from_the_oldest_change_and_reach_syncs_share_from_its_append() -> None:
    window = Window(opened_at=0.0, due_after_s=600)

    def change(entity_id: int, committed: int, appended: int | None, op: str = "u") -> DirtyKey:
        cause = Cause(kind="cdc", op=op, source_ts_ms=committed, appended_ms=appended)
        return DirtyKey("customers", entity_id, cause)

    window.add(change(1, 1_000, 1_300), 0, window_s=0.1)
    window.add(change(1, 1_100, 1_350), 1, window_s=0.1)  # later change of the same entity
    window.add(change(2, 1_200, None), 2, window_s=0.1)  # no timestamp on the source event
    window.add(change(3, 500, 600, op="r"), 3, window_s=0.1)  # a snapshot read: no latency
    window.hold("customers", ["4"], "merchant-1")
    window.add(change(4, 1_000, 1_100), 4, window_s=0.1)  # held: not accepted yet

    latencies, own = window.latencies_ms(2_000)

    assert sorted(latencies) == [800, 1_000]
    assert own == [700]


def test_a_window_remembers_when_its_oldest_key_was_routed_across_a_merge() -> None:
    def routed(entity_id: int, enqueued_ms: int) -> DirtyKey:
        return DirtyKey("customers", entity_id, Cause(kind="cdc", op="u"), enqueued_ms)

    window = Window(opened_at=0.0, due_after_s=600)
    window.add(routed(1, 500), 0, window_s=0.1)
    window.add(routed(2, 300), 1, window_s=0.1)
    window.add(routed(3, 0), 2, window_s=0.1)  # not known: ignored
    assert window.first_enqueued_ms == 300
    later = Window(opened_at=1.0, due_after_s=600)
    later.add(routed(4, 200), 3, window_s=0.1)
    window.absorb(later)
    assert window.first_enqueued_ms == 200
