"""`reach-sync dlq list | replay` on the real broker, with no database to reach.

Dead letters are written by reach-sync's own producing code (records/deadletter.py), both kinds:
events read back from a real source topic and rejected by the router's real decoder or trigger
index, and records as the syncer writes them. The commands run through the CLI entry point; the
dirty topic is read back by partition assignment and compared key for key. The definition's
database points at a closed port: neither command may need it (the syncer recomputes from it).
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.cli import records
from consumer.cli.main import main
from consumer.cli.progress import Progress
from consumer.config_file import load_definition
from consumer.errors import BadRecord
from consumer.records.deadletter import DeadLetterEvent, dead_letter_record, produce_dead_letter
from consumer.router.debezium import Ignored, decode_event
from consumer.router.dirty import Cause, DirtyKey, decode_dirty
from consumer.router.triggers import TriggerIndex, UnknownTable, plan_dirty

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "shop.yaml"
DIRTY_PARTITIONS = 8  # examples/shop.yaml
TIMEOUT_S = 30.0
# After the expected keys arrived, how long the dirty topic must stay quiet (nothing extra).
QUIET_S = 2.0
ENV = {
    "REACH_SYNC_PARTNER_ID": "partner-1",
    "REACH_SYNC_JWT_SECRET": "unused-by-dlq",
    "REACH_SYNC_REACH_URL": "http://127.0.0.1:1",
    "REACH_SYNC_REDIS_URL": "redis://127.0.0.1:1/0",
    # Nothing listens there: a command that connected would fail with exit code 1.
    "REACH_SYNC_DATABASE_URL": "postgresql://reach-sync@127.0.0.1:1/none?connect_timeout=1",
}
EXIT_CONFIG, EXIT_NO_MATCH, EXIT_STILL_FAILING = 2, 3, 4


@dataclass(frozen=True)
class Shop:
    """A definition file over this test's own topics, and the names the tests check."""

    config: Path
    broker: str
    dead_letter: str
    dirty: str
    customers: str


def _write_definition(tmp_path: Path, broker: str, prefix: str, dead_letter: str) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["source"]["kafka"]["bootstrap_servers"] = broker
    data["source"]["kafka"]["group_id"] = prefix
    data["topics"] = {
        "dirty": f"{prefix}.dirty",
        "dirty_partitions": DIRTY_PARTITIONS,
        "dead_letter": dead_letter,
    }
    path = tmp_path / f"{prefix}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def shop(
    tmp_path: Path, broker: str, unique: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> Shop:
    """A dead-letter topic of one partition as the router creates it, and no dirty topic yet."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    prefix = unique("dlq")
    dead_letter = f"{prefix}.dead-letter"
    customers = f"{prefix}.public.customers"
    _create_topics(broker, {dead_letter: 1, customers: 1})
    config = _write_definition(tmp_path, broker, prefix, dead_letter)
    return Shop(config, broker, dead_letter, f"{prefix}.dirty", customers)


def _create_topics(broker: str, partitions: dict[str, int]) -> None:
    admin = AdminClient({"bootstrap.servers": broker})
    futures = admin.create_topics([NewTopic(t, n, 1) for t, n in partitions.items()])
    for future in futures.values():
        future.result(timeout=10)


def _topics(broker: str) -> set[str]:
    """Every topic, without naming one (naming a topic makes the local broker create it)."""
    return set(AdminClient({"bootstrap.servers": broker}).list_topics(timeout=10).topics)


def _envelope(table: str, after: dict[str, Any]) -> bytes:
    source = {"schema": "public", "table": table, "ts_ms": 1_795_400_000_000, "lsn": 42}
    return orjson.dumps({"before": None, "after": after, "op": "u", "source": source})


def _source_messages(shop: Shop, events: list[tuple[bytes, bytes]]) -> list[Message]:
    """Produce source events and read them back: real messages, as the router gets them."""
    producer = Producer({"bootstrap.servers": shop.broker})
    for key, value in events:
        producer.produce(shop.customers, value, key)
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": shop.broker, "group.id": "dlq-tests-unused"})
    consumer.assign([TopicPartition(shop.customers, 0, OFFSET_BEGINNING)])
    messages: list[Message] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(messages) < len(events) and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(10, 0.2) if m.error() is None]
    consumer.close()
    assert len(messages) == len(events)
    return messages


def _rejected(message: Message, index: TriggerIndex) -> DeadLetterEvent:
    """The router's verdict on an event it cannot use, from its real decoder and triggers."""
    try:
        change = decode_event(message.key(), message.value())
        assert not isinstance(change, Ignored), "an event the router ignores is not dead-lettered"
        plan_dirty(change, index)
    except BadRecord as exc:
        return DeadLetterEvent.from_message(message, exc)
    raise AssertionError("the router would have routed this event")


def _record(entity_id: str, tenant: str, resource: str = "customers") -> Any:
    return dead_letter_record(
        resource=resource,
        entity_id=entity_id,  # the syncer's dead letters carry ids as text
        tenant=tenant,
        cause=Cause(kind="cdc", table=f"public.{resource}", op="u", topic="shop.public.x"),
        error=BadRecord("Reach refused the record", status=422, body='{"error":"email"}'),
        attempts=1,
        first_attempt_ms=1,
        last_attempt_ms=2,
        payload_sha256="b" * 64,
    )


def _write_dead_letters(shop: Shop) -> None:
    """Offsets 0..7 of the dead-letter topic: records, events of both fates, one stranger.

    0 record customers/7       1 event, not JSON (still fails)
    2 record customers/8       3 event on customers/9, rejected by an older definition (routes now)
    4 record transactions/5    5 event on public.orders (still no trigger)
    6 record customers/7       7 a message that is no dead letter at all
    """
    definition = load_definition(shop.config)
    index = TriggerIndex.from_definition(definition)
    not_json, customer_9, orders = _source_messages(
        shop,
        [
            (b'{"id":1}', b"{not json"),
            (b'{"id":9}', _envelope("customers", {"id": 9})),
            (b'{"id":1}', _envelope("orders", {"id": 1})),
        ],
    )
    older = DeadLetterEvent.from_message(customer_9, UnknownTable("no trigger on table x"))
    letters = [
        _record("7", "merchant-1"),
        _rejected(not_json, index),
        _record("8", "merchant-2"),
        older,
        _record("5", "merchant-1", resource="transactions"),
        _rejected(orders, index),
        _record("7", "merchant-1"),
    ]
    producer = Producer({"bootstrap.servers": shop.broker, "linger.ms": 50})
    for letter in letters:
        produce_dead_letter(producer, shop.dead_letter, letter)
    producer.produce(shop.dead_letter, b"hello", b"stranger")
    assert producer.flush(10) == 0  # one batch: the local broker's watermark misses most of it


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _listed(capsys: pytest.CaptureFixture[str], shop: Shop, *filters: str) -> list[dict[str, Any]]:
    code, out, err = _run(capsys, "dlq", "list", "--config", str(shop.config), "--json", *filters)
    assert (code, err) == (0, "")
    return [json.loads(line) for line in out.splitlines()]


def test_list_shows_every_dead_letter_and_the_filters_choose(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_dead_letters(shop)

    code, out, err = _run(capsys, "dlq", "list", "--config", str(shop.config))
    assert (code, err) == (0, "")
    header, *rows, summary = out.splitlines()
    assert header.split()[:4] == ["DEAD-LETTERED", "(UTC)", "AT", "KIND"]
    assert [row.split()[2:4] for row in rows] == [
        *(["0:0", "record"], ["0:1", "event"], ["0:2", "record"], ["0:3", "event"]),
        *(["0:4", "record"], ["0:5", "event"], ["0:6", "record"], ["0:7", "undecodable"]),
    ]
    assert rows[0].split()[4:] == [
        *("customers/7", "merchant-1", "BadRecord", "422"),
        *("Reach", "refused", "the", "record"),
    ]
    assert f"from {shop.customers}[0]@0" in rows[1] and "DecodeError" in rows[1]
    assert "UnknownTable" in rows[5] and rows[5].endswith("no trigger on table public.orders")
    assert summary == f"8 of 8 dead letters in {shop.dead_letter}; oldest first"

    every = _listed(capsys, shop)
    assert [(e["offset"], e["kind"], e["resource"], e["id"]) for e in every] == [
        (0, "record", "customers", "7"),
        (1, "event", None, None),
        (2, "record", "customers", "8"),
        (3, "event", None, None),
        (4, "record", "transactions", "5"),
        (5, "event", None, None),
        (6, "record", "customers", "7"),
        (7, "undecodable", None, None),
    ]
    assert every[1]["source"]["topic"] == shop.customers and every[1]["source"]["offset"] == 0
    assert every[1]["reason"].startswith("the value is not a Debezium envelope")
    assert every[0]["record"]["http_status"] == 422
    assert every[7]["reason"] == "not a dead letter: no reach-sync-dlq-kind header"

    def offsets(*filters: str) -> list[int]:
        return [e["offset"] for e in _listed(capsys, shop, *filters)]

    assert offsets("--resource", "customers", "--id", "7") == [0, 6]
    assert offsets("--kind", "event") == [1, 3, 5]
    assert offsets("--tenant", "merchant-2") == [2]
    assert offsets("--error-class", "DecodeError") == [1]
    assert offsets("--limit", "2") == [6, 7]
    assert offsets("--kind", "record", "--since", "2000-01-01", "--until", "2100-01-01") == [
        0,
        2,
        4,
        6,
    ]


def test_replay_makes_each_entity_dirty_once_and_reports_what_still_fails(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_dead_letters(shop)
    config = str(shop.config)

    code, out, _ = _run(capsys, "dlq", "replay", "--config", config, "--dry-run")
    assert code == EXIT_STILL_FAILING
    assert f"would re-enqueue 4 dirty keys to {shop.dirty}: customers 3, transactions 1" in out
    assert shop.dirty not in _topics(shop.broker), "a dry run produces nothing"

    code, out, err = _run(capsys, "dlq", "replay", "--config", config)
    assert (code, err) == (EXIT_STILL_FAILING, "")
    lines = out.splitlines()
    assert lines[0] == (
        f"8 dead letters selected in {shop.dead_letter} (3 event, 4 record, 1 undecodable)"
    )
    assert lines[1] == f"re-enqueued 4 dirty keys to {shop.dirty}: customers 3, transactions 1"
    assert lines[2] == "3 dead letters still failing, not replayed:"
    assert lines[3].startswith(
        "  0:1 event: consumer.router.debezium.DecodeError: the value is not"
    )
    assert (
        lines[4]
        == "  0:5 event: consumer.router.triggers.UnknownTable: no trigger on table public.orders"
    )
    assert lines[5] == "  0:7 undecodable: not a dead letter: no reach-sync-dlq-kind header"
    assert "nothing was removed" in lines[6]

    dirty = _read_dirty(shop, expected=4)
    assert sorted(dirty) == ["customers/7", "customers/8", "customers/9", "transactions/5"]
    replay = Cause(kind="replay", topic=shop.dead_letter, partition=0)

    def caused(offset: int, table: str) -> Cause:
        return Cause(**{**_fields(replay), "offset": offset, "table": table, "op": "u"})

    # Ids as the dead letters hold them: records' as text, the re-routed event's as the router's.
    expected = {
        "customers/7": DirtyKey("customers", "7", caused(0, "public.customers")),
        "customers/8": DirtyKey("customers", "8", caused(2, "public.customers")),
        "customers/9": DirtyKey("customers", 9, caused(3, "public.customers")),
        "transactions/5": DirtyKey("transactions", "5", caused(4, "public.transactions")),
    }
    assert {k: _without_time(v) for k, v in dirty.items()} == expected
    assert all(v.enqueued_ms > 0 for v in dirty.values())

    # Replaying again is harmless: the same keys again, and the dead letters are all still there.
    code, out, _ = _run(capsys, "dlq", "replay", "--config", config, "--kind", "record")
    assert code == 0 and "re-enqueued 3 dirty keys" in out
    assert len(_read_dirty(shop, expected=7, unique_keys=False)) == 4
    assert len(_listed(capsys, shop)) == 8


def _fields(cause: Cause) -> dict[str, Any]:
    return {f: getattr(cause, f) for f in cause.__struct_fields__}


def _without_time(key: DirtyKey) -> DirtyKey:
    return DirtyKey(key.resource, key.id, key.cause)


def _read_dirty(shop: Shop, expected: int, unique_keys: bool = True) -> dict[str, DirtyKey]:
    """Read the dirty topic until ``expected`` messages arrived and then nothing more for
    QUIET_S; every message must sit on one partition per entity and match its key."""
    consumer = Consumer({"bootstrap.servers": shop.broker, "group.id": "dlq-tests-unused"})
    consumer.assign([TopicPartition(shop.dirty, p, OFFSET_BEGINNING) for p in range(8)])
    messages: list[Message] = []
    deadline = time.monotonic() + TIMEOUT_S
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        batch = [m for m in consumer.consume(100, 0.2) if m.error() is None]
        if batch:
            messages += batch
            quiet_since = time.monotonic()
        elif len(messages) >= expected and time.monotonic() - quiet_since > QUIET_S:
            break
    consumer.close()
    assert len(messages) == expected
    keys: dict[str, DirtyKey] = {}
    partitions: dict[str, set[int | None]] = {}
    for message in messages:
        key = (message.key() or b"").decode()
        value = decode_dirty(message.value() or b"")
        assert key == f"{value.resource}/{value.id}"
        assert not unique_keys or key not in keys, f"{key} twice"
        keys[key] = value
        partitions.setdefault(key, set()).add(message.partition())
    assert all(len(p) == 1 for p in partitions.values())
    return keys


def test_a_filter_that_matches_nothing_says_so_with_its_own_exit_code(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_dead_letters(shop)
    for command in ("list", "replay"):
        code, out, err = _run(
            capsys,
            "dlq",
            command,
            "--config",
            str(shop.config),
            "--resource",
            "customers",
            "--id",
            "12345",
        )
        assert (code, out) == (EXIT_NO_MATCH, "")
        assert err == (
            f"dlq {command}: no dead letter in {shop.dead_letter} matches --resource customers "
            "--id 12345 (8 dead letters in the topic)\n"
        )
    assert shop.dirty not in _topics(shop.broker)


def test_an_empty_dead_letter_topic_is_not_an_error(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(capsys, "dlq", "list", "--config", str(shop.config))
    assert (code, out, err) == (0, "", f"{shop.dead_letter} holds no dead letters\n")
    code, out, err = _run(capsys, "dlq", "replay", "--config", str(shop.config))
    assert (code, out) == (0, "")
    assert err == f"{shop.dead_letter} holds no dead letters: nothing to replay\n"


def test_a_missing_dead_letter_topic_is_a_clear_error_and_is_not_created(
    shop: Shop, tmp_path: Path, unique: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = unique("dlq")
    missing = f"{prefix}.no-such-dead-letter"
    config = _write_definition(tmp_path, shop.broker, prefix, missing)
    for command in ("list", "replay"):
        code, out, err = _run(capsys, "dlq", command, "--config", str(config))
        assert (code, out) == (EXIT_CONFIG, "")
        assert err == (
            f"dlq {command}: the dead-letter topic {missing} does not exist (check "
            "topics.dead_letter; reach-sync run creates it)\n"
        )
    assert missing not in _topics(shop.broker)


def test_replay_reports_progress_on_stderr_as_the_broker_acknowledges(
    shop: Shop, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay this small is over before progress would show (consumer/cli/progress.py waits a
    second); shown from the start, its last line counts every acknowledged dirty key."""
    _write_dead_letters(shop)
    monkeypatch.setattr(records, "Progress", functools.partial(Progress, delay_s=0.0, tty=False))
    code, out, err = _run(capsys, "dlq", "replay", "--config", str(shop.config), "--kind", "record")
    assert code == 0 and "re-enqueued 3 dirty keys" in out
    first, *_, last = err.splitlines()
    assert first.startswith("dlq replay: re-enqueued: ")
    final = r"dlq replay: re-enqueued: 3/3 entities \(100%\) in (<1|\d+) s  \S+/s"
    assert re.fullmatch(final, last), last
