"""Does the local broker's CPU for the same workload grow as it runs?

Starts the local stack's broker (with Postgres, Redis and the sandbox, idle; no Debezium), then
runs the same small workload ``--steps`` times, ``--seconds`` each: one producer appends
``--rate`` messages/s of ``--value-bytes`` each (lz4, 5 ms linger: about one record batch a
message at this rate) to a topic of 4 partitions, and one consumer, the same for every step,
reads them from the tail. Nothing else happens between steps. The broker's CPU per step says
whether a request costs it more as its partitions hold more record batches; ``--fill`` first
appends that many messages in large batches, to tell record batches apart from bytes.

Why: the latency curve of bench/pipeline.py used to measure each rate after the others on one
stack, and its later rates got slower for this reason rather than reach-sync's
(docs/benchmarks.md, "The local broker slows down as it fills").

    .venv/bin/python bench/broker_growth.py --steps 5 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

# bench/cpu.py, next to this file.
from cpu import CpuMeter, cpu_during  # type: ignore[import-not-found]
from reach_devstack.stack import LocalStack, StackOptions

TOPIC = "growth"
PARTITIONS = 4
JOIN_TIMEOUT_S = 30.0


def _fill(producer: Producer, messages: int, value: bytes) -> None:
    """Append ``messages`` as fast as the producer batches them (large record batches)."""
    for i in range(messages):
        while True:
            try:
                producer.produce(TOPIC, value, str(i).encode())
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120) != 0:
        raise SystemExit("the fill was not acknowledged within 120 s")


def _skip(consumer: Consumer, messages: int) -> None:
    """Read what the fill appended, so that the next step reads only its own messages."""
    read, deadline = 0, time.monotonic() + 120
    while read < messages and time.monotonic() < deadline:
        read += len(consumer.consume(10_000, 1.0))


def _step(producer: Producer, consumer: Consumer, value: bytes, rate: float, seconds: float) -> int:
    """Produce at ``rate`` for ``seconds`` on a thread while this one reads; messages read."""
    stop = threading.Event()

    def produce() -> None:
        started, sent = time.monotonic(), 0
        while not stop.is_set():
            producer.produce(TOPIC, value, str(sent).encode())
            sent += 1
            producer.poll(0)
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))

    thread = threading.Thread(target=produce, name="growth-producer")
    read, started = 0, time.monotonic()
    thread.start()
    try:
        while time.monotonic() - started < seconds:
            read += len(consumer.consume(500, 0.1))
    finally:
        stop.set()
        thread.join()
    producer.flush(30)
    return read


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="per step")
    parser.add_argument("--rate", type=float, default=300.0, help="messages/s produced")
    parser.add_argument("--value-bytes", type=int, default=3500)
    parser.add_argument(
        "--fill", type=int, default=0, help="messages appended in large batches before step 2"
    )
    args = parser.parse_args(argv)
    value = os.urandom(args.value_bytes // 2).hex().encode()
    steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="reach-sync-broker-growth-") as tmp:
        state = Path(tmp)
        state.chmod(0o755)  # an unprivileged Postgres must traverse it
        options = StackOptions(state_dir=state / "stack", with_debezium=False)
        with LocalStack(options) as stack:
            assert stack.endpoints is not None
            endpoints = stack.endpoints
            servers = endpoints.bootstrap_servers
            admin = AdminClient({"bootstrap.servers": servers})
            admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result()
            producer = Producer(
                {"bootstrap.servers": servers, "linger.ms": 5, "compression.type": "lz4"}
            )
            consumer = Consumer(
                {
                    "bootstrap.servers": servers,
                    "group.id": "broker-growth",
                    "auto.offset.reset": "latest",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 10,
                    "session.timeout.ms": 6000,
                }
            )
            consumer.subscribe([TOPIC])
            joined = time.monotonic()
            while not consumer.assignment():
                if time.monotonic() - joined > JOIN_TIMEOUT_S:
                    raise SystemExit("the consumer got no partitions")
                consumer.poll(0.1)
            meter = CpuMeter(groups={"broker": endpoints.pids["broker"]})
            try:
                for number in range(1, args.steps + 1):
                    filled = 0
                    if number == 2 and args.fill:
                        _fill(producer, args.fill, value)
                        filled = args.fill
                        _skip(consumer, args.fill)
                    with cpu_during(meter) as cpu:
                        read = _step(producer, consumer, value, args.rate, args.seconds)
                    assert cpu.usage is not None
                    broker_s = cpu.usage.seconds["broker"]
                    steps.append(
                        {"step": number, "filled": filled, "read": read, "broker_cpu_s": broker_s}
                    )
                    fill_note = f" (after a fill of {filled:,})" if filled else ""
                    print(
                        f"step {number}{fill_note}: broker {broker_s:.2f} s of CPU in "
                        f"{cpu.usage.wall_s:.1f} s, {read:,} messages read",
                        flush=True,
                    )
            finally:
                consumer.close()
    first = steps[0]["broker_cpu_s"]
    print(
        f"{args.rate:g} messages/s of {args.value_bytes:,} B for {args.seconds:g} s per step: "
        f"the broker's CPU went from {first:.2f} s to {steps[-1]['broker_cpu_s']:.2f} s "
        f"({steps[-1]['broker_cpu_s'] / first:.2f}x the first step)"
    )
    print(json.dumps({"rate": args.rate, "seconds": args.seconds, "steps": steps}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
