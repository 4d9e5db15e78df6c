"""What a window holds until Reach answers: each record's JSON at its own size.

orjson (from 3.12) hands back its whole write buffer, 4 KiB or more, for a 250-byte record; a
window keeps up to ``max_keys`` encoded records, more while Reach is slow (docs/benchmarks.md).
"""

from __future__ import annotations

import tracemalloc

import orjson

from consumer.reach.batching import json_bytes

RECORDS = [
    {
        "customerId": str(n),
        "email": f"customer{n}@example.com",
        "firstName": "Ann",
        "lastName": "Smith",
        "marketingOptIn": True,
        "lifetimeValue": orjson.Fragment(b"123.45"),
        "segments": ["high_value"],
    }
    for n in range(1000)
]


def test_records_encoded_for_a_request_take_about_their_own_size_in_memory() -> None:
    tracemalloc.start()
    try:
        held = [json_bytes(record) for record in RECORDS]
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    json_size = sum(map(len, held))
    # Each bytes object's header (33 B) and the list's slot, with room for the allocator's
    # rounding: far below the 4 KiB a record took as orjson's buffer.
    assert traced < json_size + 100 * len(held)


def test_the_encoding_is_orjsons_compact_json() -> None:
    assert json_bytes(RECORDS[7]) == orjson.dumps(RECORDS[7])
    assert json_bytes("c-1") == b'"c-1"'
