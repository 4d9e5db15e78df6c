"""The audit topic on the real broker: AuditWriter produces, `reach-sync audit why` reads back.

Records are written by reach-sync's own writer (its own producer, as the syncer will use it)
for several entities, one of them sent several times, moved to another tenant and deleted from
the first, each send announced ahead (a ``sending`` record) and then answered; another's last
send left and was never answered (its process ended). The command runs through the CLI entry
point and must list exactly that entity's sends, newest first, each once (a sending record and
its outcome are one send), reading only the partition its key hashes to. The definition's database
and Redis point at closed ports: reading the audit needs neither.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.cli.main import main
from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import Retryable
from consumer.records.audit import (
    AuditWriter,
    audit_partition,
    ensure_audit_topic,
)
from consumer.records.audit_read import OUTCOME_UNKNOWN
from consumer.router.dirty import Cause
from consumer.sink.outcomes import Deleting, Removed, Sending, Sent
from consumer.sink.projection import GROUP_COLUMN_PREFIX, Projected, project

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "shop.yaml"
PARTITIONS = 8
TIMEOUT_S = 30.0
ENV = {
    "REACH_SYNC_PARTNER_ID": "partner-1",
    "REACH_SYNC_JWT_SECRET": "unused-by-audit",
    "REACH_SYNC_REDIS_URL": "redis://127.0.0.1:1/0",
    "REACH_SYNC_DATABASE_URL": "postgresql://reach-sync@127.0.0.1:1/none?connect_timeout=1",
    "REACH_SYNC_REACH_URL": "https://partner:secret@reach.example.com:8443/api",
}
EXIT_CONFIG, EXIT_NO_MATCH = 2, 3
T0 = 1_795_400_000_000  # 2026-11-23 02:13:20Z
# What _write_history writes: 9 outcome records (one of them twice) and 6 sending records.
MESSAGES = 15
EMAIL = "ada.lovelace@example.com"


@dataclass(frozen=True)
class Shop:
    config: Path
    definition: SyncDefinition
    broker: str
    audit: str


def _write_definition(path: Path, broker: str, prefix: str, audit: str) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["source"]["kafka"]["bootstrap_servers"] = broker
    data["source"]["kafka"]["group_id"] = prefix
    data["topics"] = {
        "dirty": f"{prefix}.dirty",
        "dirty_partitions": PARTITIONS,
        "dead_letter": f"{prefix}.dead-letter",
        "audit": audit,
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def shop(
    tmp_path: Path, broker: str, unique: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> Shop:
    """A definition whose audit topic exists, created as `run` will create it."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    prefix = unique("audit")
    audit = f"{prefix}.audit"
    config = _write_definition(tmp_path / "shop.yaml", broker, prefix, audit)
    definition = load_definition(config)
    ensure_audit_topic(definition)
    return Shop(config, definition, broker, audit)


def _topics(broker: str) -> dict[str, int]:
    """Every topic and its partition count, without naming one (naming a topic makes the local
    broker create it)."""
    metadata = AdminClient({"bootstrap.servers": broker}).list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in metadata.topics.items()}


def _customer(shop: Shop, entity_id: int, tenant: str, orders: int) -> Projected:
    row: dict[str, Any] = {
        "id": entity_id,
        "tenant": tenant,
        "email": EMAIL,
        "first_name": "Ada",
        "marketing_opt_in": True,
        "lifetime_value_cents": orders * 1000,
        "completed_orders": orders,
        GROUP_COLUMN_PREFIX + "repeat_buyer": orders >= 3,
    }
    return project(shop.definition.resources["customers"], row)


def _cause(table: str, op: str, offset: int) -> Cause:
    return Cause(
        kind="cdc",
        table=f"public.{table}",
        op=op,
        topic=f"shop.public.{table}",
        partition=1,
        offset=offset,
        source_ts_ms=T0 + offset,
        lsn=1000 + offset,
    )


def _write_history(shop: Shop) -> AuditWriter:
    """customers/42: sent three times (the third to another tenant, then deleted from the
    first), each announced ahead; customers/7 twice (the first before sending records were
    written), then a third that left and was never answered; transactions/42 and customers/420
    once (look-alike keys)."""
    writer = AuditWriter(shop.definition)
    created = [_cause("customers", "c", 10)]
    writer.announce(
        "customers", sending=[Sending(_customer(shop, 42, "m-1", 1), T0 - 40, False, created)]
    )
    first = Sent(_customer(shop, 42, "m-1", 1), T0, causes=created)
    writer.record("customers", accepted=[first])
    writer.announce(
        "customers",
        sending=[
            Sending(
                _customer(shop, 42, "m-1", 2),
                T0 + 9_960,
                True,
                [_cause("transactions", "u", 20), _cause("transactions", "c", 21)],
            )
        ],
    )
    writer.record(
        "customers",
        accepted=[
            Sent(
                _customer(shop, 42, "m-1", 2),
                T0 + 10_000,
                causes=[_cause("transactions", "u", 20), _cause("transactions", "c", 21)],
                batch_id="b-1",
            ),
            Sent(_customer(shop, 7, "m-1", 1), T0 + 10_000, causes=[_cause("customers", "c", 22)]),
        ],
    )
    writer.announce(
        "customers",
        sending=[
            Sending(
                _customer(shop, 42, "m-2", 3), T0 + 19_970, False, [_cause("customers", "u", 30)]
            ),
            Sending(
                _customer(shop, 7, "m-1", 4), T0 + 19_970, False, [_cause("customers", "u", 31)]
            ),
        ],
        deleting=[Deleting("m-1", "42", T0 + 19_980, causes=[_cause("customers", "u", 30)])],
    )
    writer.record(
        "customers",
        accepted=[
            Sent(_customer(shop, 42, "m-2", 3), T0 + 20_000, causes=[_cause("customers", "u", 30)]),
            Sent(_customer(shop, 7, "m-1", 4), T0 + 20_000, causes=[_cause("customers", "u", 31)]),
            Sent(
                _customer(shop, 420, "m-1", 1), T0 + 20_000, causes=[_cause("customers", "c", 32)]
            ),
        ],
        deleted=[Removed("m-1", "42", T0 + 20_001, "d-1", causes=[_cause("customers", "u", 30)])],
    )
    tx = project(
        shop.definition.resources["transactions"],
        {"id": 42, "tenant": "m-1", "customer_id": 42, "status": "completed"},
    )
    writer.record("transactions", accepted=[Sent(tx, T0, causes=[_cause("transactions", "c", 40)])])
    writer.record("customers", accepted=[first])  # a record produced twice is shown once
    # customers/7's last send: announced, and its process ended before the answer.
    writer.announce(
        "customers",
        sending=[
            Sending(_customer(shop, 7, "m-1", 5), T0 + 30_000, True, [_cause("customers", "u", 50)])
        ],
    )
    writer.flush()
    assert (writer.acknowledged, writer.pending) == (MESSAGES, 0)
    return writer


def _why(capsys: pytest.CaptureFixture[str], shop: Shop, *args: str) -> tuple[int, str, str]:
    code = main(["audit", "why", *args, "--config", str(shop.config)])
    out, err = capsys.readouterr()
    return code, out, err


def _json_why(capsys: pytest.CaptureFixture[str], shop: Shop, *args: str) -> list[dict[str, Any]]:
    code, out, err = _why(capsys, shop, *args, "--json")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _read_all(shop: Shop) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": shop.broker, "group.id": "audit-tests-unused"})
    consumer.assign([TopicPartition(shop.audit, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    messages: list[Message] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(messages) < MESSAGES and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(50, 0.2) if m.error() is None]
    consumer.close()
    return messages


def test_the_topic_is_created_like_the_dirty_topic_and_keys_land_where_computed(
    shop: Shop,
) -> None:
    assert _topics(shop.broker)[shop.audit] == PARTITIONS
    ensure_audit_topic(shop.definition)  # an existing topic is kept
    _write_history(shop)
    messages = _read_all(shop)
    assert len(messages) == MESSAGES
    for message in messages:
        key = message.key()
        assert key is not None
        assert message.partition() == audit_partition(key, PARTITIONS), key
    assert len({m.partition() for m in messages}) > 1  # spread, not all in one partition


def test_why_lists_exactly_that_entitys_sends_newest_first(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_history(shop)
    records = _json_why(capsys, shop, "customers", "42")
    assert [(r["kind"], r["tenant"], r["at_ms"]) for r in records] == [
        ("delete", "m-1", T0 + 20_001),
        ("upsert", "m-2", T0 + 20_000),
        ("upsert", "m-1", T0 + 10_000),
        ("upsert", "m-1", T0),
    ]
    assert {(r["resource"], r["id"]) for r in records} == {("customers", "42")}
    assert len({r["partition"] for r in records}) == 1
    upserts = records[1:]
    assert len({r["payload_sha256"] for r in upserts}) == 3  # three different states
    assert [r["values"]["completedOrders"] for r in upserts] == [3, 2, 1]
    assert [[c["offset"] for c in r["causes"]] for r in records] == [[30], [30], [20, 21], [10]]
    assert [(r["mode"], r["batch_id"]) for r in records] == [
        ("batch", "d-1"),
        ("realtime", None),
        ("batch", "b-1"),
        ("realtime", None),
    ]
    # Each send once: its outcome, with when its sending record was written.
    assert [r["outcome"] for r in records] == ["deleted", "accepted", "accepted", "accepted"]
    assert [r["announced_at_ms"] for r in records] == [
        T0 + 19_980,
        T0 + 19_970,
        T0 + 9_960,
        T0 - 40,
    ]
    assert {r["destination"] for r in records} == {"reach.example.com:8443"}
    assert all("email" in r["fields"] and "email" not in r["values"] for r in upserts)
    assert EMAIL not in json.dumps(records) and "secret" not in json.dumps(records)

    code, out, err = _why(capsys, shop, "customers", "42")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    headings = [line for line in lines[:-1] if not line.startswith(" ")]
    assert [h.split()[2:4] for h in headings] == [
        ["delete", "deleted"],
        ["upsert", "accepted"],
        ["upsert", "accepted"],
        ["upsert", "accepted"],
    ]
    assert (
        headings[0]
        == "2026-11-23 02:13:40.001Z  delete  deleted   hash -             tenant m-1  batch d-1"
    )
    assert headings[1] == (
        f"2026-11-23 02:13:40.000Z  upsert  accepted  hash {upserts[0]['payload_sha256'][:12]}  "
        "tenant m-2  realtime"
    )
    assert headings[2].endswith("  tenant m-1  batch b-1")
    assert lines[lines.index(headings[0]) + 1] == (
        "    announced: 2026-11-23 02:13:39.980Z, before the request left"
    )
    assert lines[lines.index(headings[3]) + 1] == (
        "    announced: 2026-11-23 02:13:19.960Z, before the request left"
    )
    assert (
        "    cause:  cdc public.transactions u @ shop.public.transactions[1]/20, lsn 1020, "
        "source ts 2026-11-23 02:13:20.020Z"
    ) in lines
    assert any(
        line.startswith("    fields: completedOrders, createdAt, customerId") for line in lines
    )
    assert lines[-1] == (
        f"4 records for customers/42 in {shop.audit} "
        f"(partition {records[0]['partition']} of {PARTITIONS}); newest first; unchanged "
        "recomputes are not sent and not audited"
    )


def test_why_filters_by_tenant_time_and_limit(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_history(shop)
    by_tenant = _json_why(capsys, shop, "customers", "42", "--tenant", "m-2")
    assert [(r["kind"], r["at_ms"]) for r in by_tenant] == [("upsert", T0 + 20_000)]
    since = _json_why(capsys, shop, "customers", "42", "--since", "2026-11-23T02:13:35Z")
    assert [r["at_ms"] for r in since] == [T0 + 20_001, T0 + 20_000]
    both = _json_why(
        capsys, shop, "customers", "42", "--tenant", "m-1", "--since", "2026-11-23T02:13:35"
    )
    assert [r["kind"] for r in both] == ["delete"]
    # Announced before --since, answered after: still one send.
    late = _json_why(capsys, shop, "customers", "42", "--since", "2026-11-23T02:13:39.990Z")
    assert [(r["at_ms"], r["announced_at_ms"]) for r in late] == [
        (T0 + 20_001, T0 + 19_980),
        (T0 + 20_000, T0 + 19_970),
    ]
    other = _json_why(capsys, shop, "customers", "7")
    assert [r["values"]["completedOrders"] for r in other] == [5, 4, 1]
    assert [(r["outcome"], r["announced_at_ms"], r["batch_id"]) for r in other] == [
        ("sending", T0 + 30_000, None),  # left; its outcome is unknown
        ("accepted", T0 + 19_970, None),
        ("accepted", None, None),  # written before sending records were
    ]
    code, out, _ = _why(capsys, shop, "customers", "7")
    assert code == 0
    assert out.splitlines()[:2] == [
        f"2026-11-23 02:13:50.000Z  upsert  sending   hash {other[0]['payload_sha256'][:12]}  "
        "tenant m-1  batch",
        f"    {OUTCOME_UNKNOWN}",
    ]
    assert out.splitlines()[-1].startswith("3 records for customers/7 in ")
    assert [r["id"] for r in _json_why(capsys, shop, "transactions", "42")] == ["42"]
    everywhere = _json_why(capsys, shop, "customers", "42", "--all-partitions")
    assert [r["at_ms"] for r in everywhere] == [T0 + 20_001, T0 + 20_000, T0 + 10_000, T0]

    code, out, _ = _why(capsys, shop, "customers", "42", "--limit", "2")
    assert code == 0
    assert len([line for line in out.splitlines()[:-1] if not line.startswith(" ")]) == 2
    assert ", the 2 most recent of 4; newest first" in out.splitlines()[-1]


def test_nothing_audited_is_exit_3_with_a_clear_message(
    shop: Shop, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _why(capsys, shop, "customers", "42")
    assert (code, out) == (EXIT_NO_MATCH, "")
    assert err == (
        f"audit why: nothing was audited for customers/42 in {shop.audit} (0 records read from "
        f"partition {audit_partition(b'customers/42', PARTITIONS)} of {PARTITIONS})\n"
    )
    _write_history(shop)
    code, out, err = _why(capsys, shop, "customers", "42", "--tenant", "m-9")
    assert (code, out) == (EXIT_NO_MATCH, "")
    assert err.startswith(
        f"audit why: nothing was audited for customers/42 with --tenant m-9 in {shop.audit} ("
    )
    code, _, err = _why(capsys, shop, "customers", "42", "--since", "2027-01-01")
    assert code == EXIT_NO_MATCH
    assert "customers/42 with --since 2027-01-01T00:00:00.000Z" in err
    code, _, err = _why(capsys, shop, "orders", "42")
    assert code == EXIT_NO_MATCH
    assert err.rstrip().endswith("; the definition has no resource 'orders'")


def test_a_missing_audit_topic_is_exit_2_and_is_not_created(
    tmp_path: Path,
    broker: str,
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    prefix = unique("audit")
    missing = f"{prefix}.audit"
    config = _write_definition(tmp_path / "shop.yaml", broker, prefix, missing)
    code = main(["audit", "why", "customers", "42", "--config", str(config)])
    out, err = capsys.readouterr()
    assert (code, out) == (EXIT_CONFIG, "")
    assert err == (
        f"audit why: the audit topic {missing} does not exist (check topics.audit; reach-sync "
        "run creates it)\n"
    )
    assert missing not in _topics(broker)


def test_flush_raises_retryable_when_the_broker_never_acknowledges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    config = _write_definition(tmp_path / "shop.yaml", "127.0.0.1:1", "nowhere", "nowhere.audit")
    definition = load_definition(config)
    writer = AuditWriter(definition, **{"message.timeout.ms": 500})
    projected = project(definition.resources["transactions"], {"id": 1, "tenant": "m-1"})
    writer.record("transactions", accepted=[Sent(projected, T0, causes=[])])
    with pytest.raises(Retryable, match=r"the audit topic nowhere\.audit did not acknowledge 1 "):
        writer.flush(5)
    assert writer.pending == 1  # kept, to be produced again by the next flush
