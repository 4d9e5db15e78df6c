"""Where the router's decoding time goes, per event, without a broker.

Builds ``--events`` Debezium events in memory (bench/router.py's generator, with the schema
block, one topic per table as Debezium names them) and times, on this thread's CPU clock (so
other processes on the machine count less), the best of ``--repeat`` passes over them:

- touch: reading key and value lengths, the loop's own cost;
- decode_event: the whole decode (every column of the images, the schema block scanned);
- EventDecoder: the router's decoder for examples/shop.yaml's triggers (what routing needs);
- its parts alone, on the same events: the schema-prefix comparison, the payload's envelope
  decode (the general path's, images left undecoded), the key's payload decode, one image
  decode; and how many events the decoder read in one pass (envelope and images typed for
  the table, docs/benchmarks.md);
- the same events in Confluent's Avro wire format (the schemas derived as bench/router.py's
  ``--format avro`` does, held in memory rather than a registry): the router's AvroDecoder for
  the same triggers with the C reader (when the extension is built) and with the generated
  Python, and the compiled value read alone with each.

    .venv/bin/python bench/decode.py
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from reach_devstack.connect_avro import (
    without_logical_types,
)

# bench/router.py, next to this file (run as `python bench/decode.py`).
from router import AvroEncoder, EventFactory  # type: ignore[import-not-found]

from consumer.router.avro import AvroDecoder
from consumer.router.avro_reader import CompiledReader, compile_reader, native_scan

# The envelope type itself, so the part measured is what the decoder decodes.
from consumer.router.debezium import EventDecoder, _Envelope, decode_event

Event = tuple[bytes, bytes, str]
# The shop's triggers (examples/shop.yaml): what its router keeps of each table's images.
SHOP_COLUMNS = {"public.customers": ("id",), "public.transactions": ("id", "customer_id")}
_PAYLOAD = b',"payload":'


def _events(count: int) -> list[Event]:
    factory = EventFactory(True, random.Random(7))
    events = []
    for _ in range(count):
        key, value = factory.next()
        table = "customers" if b'"table":"customers"' in value else "transactions"
        events.append((key, value, f"shop.public.{table}"))
    return events


class _Schemas:
    """Writer schemas by id, in memory: the registry's part, without its server."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}

    def register(self, subject: str, schema: str) -> int:
        self.texts[len(self.texts) + 1] = schema
        return len(self.texts)

    def fetch(self, schema_id: int) -> str:
        return self.texts[schema_id]


def _avro_figures(events: list[Event], repeat: int) -> dict[str, float]:
    schemas = _Schemas()
    encoder = AvroEncoder(schemas.register, "bench")
    avro = [encoder.encode(k, v) for k, v, _ in events]
    figures: dict[str, float] = {}
    for name, scan in (("C reader", native_scan), ("generated Python", None)):
        if name == "C reader" and scan is None:
            print("  (the C extension is not built: no C reader figures)")
            continue
        decoder = AvroDecoder(schemas, SHOP_COLUMNS, scan=scan)
        for key, value in avro[:10]:  # each schema id's first event is read whole
            decoder.decode(key, value)
        figures[f"AvroDecoder, {name}"] = _best_us(avro, lambda e, d=decoder: d.decode(*e), repeat)
        readers: dict[bytes, CompiledReader] = {}
        for _, value in avro:
            header = value[:5]
            if header not in readers:
                text = schemas.fetch(int.from_bytes(header[1:], "big"))
                readers[header] = compile_reader(
                    without_logical_types(json.loads(text)), None, scan
                )
        figures[f"whole value read, {name}"] = _best_us(
            avro, lambda e, r=readers: r[e[1][:5]].read(e[1], 5), repeat
        )
    return figures


def _best_us(items: Sequence[Any], work: Callable[[Any], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        for item in items:
            work(item)
        best = min(best, time.thread_time() - started)
    return best / len(items) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    events = _events(args.events)
    decoder = EventDecoder(SHOP_COLUMNS)
    primer = events[:10]
    for key, value, topic in primer:  # learn each topic's schema prefix
        decoder.decode(key, value, topic)
    prefix = {t: v[: v.index(_PAYLOAD) + len(_PAYLOAD)] for _, v, t in events[:1000]}
    payloads = [
        (k[k.index(_PAYLOAD) + len(_PAYLOAD) : -1], v[len(prefix[t]) : -1]) for k, v, t in events
    ]
    envelope = msgspec.json.Decoder(_Envelope)
    key_decoder = msgspec.json.Decoder(dict[str, Any])
    image = msgspec.json.Decoder(dict[str, Any] | None)
    images = [msgspec.json.decode(p, type=dict[str, Any])["after"] or {} for _, p in payloads]
    image_bytes = [msgspec.json.encode(i) for i in images]
    figures = {
        "touch": _best_us(events, lambda e: len(e[0]) + len(e[1]), args.repeat),
        "decode_event": _best_us(events, lambda e: decode_event(e[0], e[1]), args.repeat),
        "EventDecoder": _best_us(events, lambda e: decoder.decode(*e), args.repeat),
        "schema prefix comparison": _best_us(
            events, lambda e: e[1].startswith(prefix[e[2]]), args.repeat
        ),
        "envelope from the payload": _best_us(
            payloads, lambda p: envelope.decode(p[1]), args.repeat
        ),
        "key from its payload": _best_us(payloads, lambda p: key_decoder.decode(p[0]), args.repeat),
        "one whole image": _best_us(image_bytes, image.decode, args.repeat),
    }
    one_pass = decoder.one_pass / (len(primer) + args.repeat * args.events)
    print(f"{args.events:,} events with the schema block, best of {args.repeat}, µs per event:")
    for name, us in figures.items():
        print(f"  {name:<36} {us:6.2f}")
    print(f"  EventDecoder read {one_pass:.1%} of its events in one pass")
    avro = _avro_figures(events, args.repeat)
    print("the same events in Avro (Confluent's wire format), µs per event:")
    for name, us in avro.items():
        ratio = us / figures["EventDecoder"] if name.startswith("AvroDecoder") else None
        against = "" if ratio is None else f"  {ratio:.2f} of EventDecoder's"
        print(f"  {name:<36} {us:6.2f}{against}")
    print(
        json.dumps(
            {
                "events": args.events,
                "us_per_event": {k: round(v, 3) for k, v in {**figures, **avro}.items()},
                "one_pass_share": round(one_pass, 4),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
