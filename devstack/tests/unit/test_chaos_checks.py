"""The pure parts of the chaos checks: matching versions to a row's commit order, accounting for
versions with audit records, and the leak scan.

Records and audit records are made by the product's own code (``project``, ``upsert_record``,
``delete_record``) and sent through JSON the way the sandbox and the audit topic hold them, so
a check passes here for the reasons it passes on a real run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import msgspec
import orjson
import pytest
from confluent_kafka import Message
from reach_devstack.chaos.checks import (
    AuditedRecord,
    BackwardReport,
    State,
    Version,
    canonical,
    check_resource,
    dsn_password,
    leaked_secrets,
    match_audit,
    match_versions,
    own_fields,
    own_state,
)
from reach_devstack.chaos.commits import (
    CommitReport,
    CommitWatch,
    EntityJudge,
    committed_before_outcome,
)
from reach_devstack.chaos.rowlog import LoggedState, qualified
from reach_devstack.demo import DEFINITION

from consumer.config import Resource, SyncDefinition
from consumer.config_file import load_definition
from consumer.records.audit import (
    AuditRecord,
    decode_audit,
    delete_record,
    encode_audit,
    upsert_record,
)
from consumer.router.dirty import Cause, DirtyKey, encode_dirty
from consumer.sink.outcomes import Removed, Sent
from consumer.sink.projection import project

CUSTOMER_COLUMNS = {
    "id",
    "merchant_id",
    "email",
    "first_name",
    "last_name",
    "phone",
    "marketing_opt_in",
    "internal_notes",
    "created_at",
    "updated_at",
}
TRANSACTION_COLUMNS = {
    "id",
    "merchant_id",
    "customer_id",
    "status",
    "amount_cents",
    "currency",
    "created_at",
    "updated_at",
}
MERCHANTS = {1: "merchant-1", 2: "merchant-2"}
CREATED = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(scope="module")
def definition() -> SyncDefinition:
    env = {
        "REACH_SYNC_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "REACH_SYNC_DATABASE_URL": "postgresql://u:p@127.0.0.1:9/db",
        "REACH_SYNC_REACH_URL": "http://127.0.0.1:9",
        "REACH_SYNC_PARTNER_ID": "partner",
        "REACH_SYNC_JWT_SECRET": "jwt-secret-0123456789-0123456789-abcdef",
        "REACH_SYNC_REDIS_URL": "redis://127.0.0.1:9/0",
    }
    return load_definition(DEFINITION, env)


def _tenant_of(row: Mapping[str, Any]) -> str | None:
    return MERCHANTS.get(row.get("merchant_id"))  # type: ignore[arg-type]


def _customer(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 7,
        "merchant_id": 1,
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "phone": None,
        "marketing_opt_in": True,
        "internal_notes": "called about delivery",
        "created_at": CREATED,
        "updated_at": CREATED,
    }
    return {**row, **changes}


def _sandbox_data(
    resource: Resource, row: Mapping[str, Any], tenant: str = "merchant-1", **aggregates: Any
) -> dict[str, Any]:
    """What the sandbox holds after reach-sync sent this row (with these aggregates): the
    projected record through JSON, its nulls dropped."""
    full = {"lifetime_value_cents": 0, "completed_orders": 0, **aggregates}
    record = project(resource, {**full, **row, "tenant": tenant}).record
    data: dict[str, Any] = orjson.loads(orjson.dumps(record))
    return {k: v for k, v in data.items() if v is not None}


def _states(*pairs: tuple[int, str | None]) -> list[tuple[int, State]]:
    """(log seq, letter) as states; None is absent."""
    return [(seq, None if s is None else (("v", s),)) for seq, s in pairs]


def _versions(*pairs: tuple[int, str | None]) -> list[tuple[int, State]]:
    return _states(*pairs)


# --- match_versions --------------------------------------------------------------------------


def test_a_row_that_goes_a_b_a_may_be_applied_a_b_a_and_resends_are_fine() -> None:
    states = _states((1, "A"), (2, "B"), (3, "A"))
    verdicts = match_versions(_versions((10, "A"), (11, "B"), (12, "A")), states)
    assert [(v.kind, v.log_seq) for v in verdicts] == [("ok", 1), ("ok", 2), ("ok", 3)]
    # The same state sent again (an aggregate changed, a retry): matched to the same state.
    verdicts = match_versions(_versions((10, "A"), (11, "A"), (12, "B"), (13, "B")), states)
    assert [v.kind for v in verdicts] == ["ok"] * 4
    # Skipping states is fine (coalescing): B then the second A.
    assert [v.log_seq for v in match_versions(_versions((10, "B"), (11, "A")), states)] == [2, 3]


def test_greedy_takes_the_earliest_state_so_later_versions_keep_their_room() -> None:
    states = _states((1, "A"), (2, "B"), (3, "A"), (4, "B"))
    verdicts = match_versions(_versions((10, "A"), (11, "B"), (12, "A"), (13, "B")), states)
    assert [v.log_seq for v in verdicts] == [1, 2, 3, 4]
    verdicts = match_versions(_versions((10, "B"), (11, "A"), (12, "A"), (13, "B")), states)
    assert [(v.kind, v.log_seq) for v in verdicts] == [("ok", 2), ("ok", 3), ("ok", 3), ("ok", 4)]


def test_a_version_going_back_is_backward_with_what_it_fell_behind() -> None:
    states = _states((1, "A"), (2, "B"), (3, "C"))
    verdicts = match_versions(_versions((10, "A"), (11, "C"), (12, "B"), (13, "C")), states)
    assert [v.kind for v in verdicts] == ["ok", "ok", "backward", "ok"]
    back = verdicts[2]
    assert (back.version_seq, back.previous_version_seq, back.previous_log_seq) == (12, 11, 3)
    assert back.earlier_log_seqs == (2,)


def test_a_state_the_row_never_had_is_never_existed_not_backward() -> None:
    states = _states((1, "A"), (2, "B"))
    verdicts = match_versions(_versions((10, "A"), (11, "X"), (12, "B")), states)
    assert [v.kind for v in verdicts] == ["ok", "never_existed", "ok"]
    assert verdicts[1].earlier_log_seqs == ()
    assert [v.kind for v in match_versions(_versions((10, "A")), [])] == ["never_existed"]


def test_deletes_match_logged_deletes_and_a_reinsert_goes_on_after_them() -> None:
    states = _states((1, "A"), (2, None), (3, "A2"))
    ok = match_versions(_versions((10, "A"), (11, None), (12, "A2")), states)
    assert [(v.kind, v.log_seq) for v in ok] == [("ok", 1), ("ok", 2), ("ok", 3)]
    # The delete applied after the re-insert's state: it goes back.
    late = match_versions(_versions((10, "A"), (11, "A2"), (12, None)), states)
    assert [v.kind for v in late] == ["ok", "ok", "backward"]
    # A delete of a row never deleted did not exist.
    assert match_versions(_versions((10, None)), _states((1, "A")))[0].kind == "never_existed"


# --- own fields, projection and null dropping -----------------------------------------------


def test_own_fields_are_the_mapped_columns_of_the_own_table(definition: SyncDefinition) -> None:
    customers = definition.resources["customers"]
    assert own_fields(customers, CUSTOMER_COLUMNS) == (
        "createdAt",
        "customerId",
        "email",
        "firstName",
        "lastName",
        "marketingOptIn",
        "phone",
    )
    transactions = definition.resources["transactions"]
    assert set(own_fields(transactions, TRANSACTION_COLUMNS)) == set(transactions.mapping)


def test_canonical_compares_numbers_by_value_and_keeps_booleans_apart() -> None:
    assert canonical(19.99) == canonical(Decimal("19.99")) == canonical(orjson.Fragment(b"19.99"))
    assert canonical(2500.0) == canonical(Decimal("2500")) == canonical(2500)
    assert canonical(True) != canonical(1)
    assert canonical(["a", 1.5]) == canonical(("a", Decimal("1.50")))
    assert own_state({"a": None, "b": 1, "c": "x"}, ["a", "b"]) == (("b", canonical(1)),)


def _check(
    definition: SyncDefinition,
    name: str,
    versions: list[Version],
    logged: dict[str, list[LoggedState]],
    since_seq: int = 0,
) -> BackwardReport:
    resource = definition.resources[name]
    columns = CUSTOMER_COLUMNS if name == "customers" else TRANSACTION_COLUMNS
    report = BackwardReport()
    check_resource(
        name,
        resource,
        own_fields(resource, columns),
        versions,
        logged,
        _tenant_of,
        {"merchant-1", "merchant-2"},
        report,
        since_seq,
    )
    return report


def _version(
    seq: int, data: dict[str, Any] | None, schema: str = "shop_customers", **kw: Any
) -> Version:
    external_id = kw.pop("external_id", "7")
    tenant = kw.pop("tenant", "merchant-1")
    op = "upsert" if data is not None else "delete"
    return Version(
        seq,
        tenant,
        schema,
        external_id,
        op,
        data,
        kw.get("batch_id"),
        kw.get("request_id"),
        kw.get("arrived_at"),
        kw.get("applied_at"),
    )


def test_customers_match_on_own_fields_as_reach_sync_projects_them(
    definition: SyncDefinition,
) -> None:
    customers = definition.resources["customers"]
    a = _customer()
    b = _customer(last_name="Byron", phone="+15550000001")
    c = _customer(internal_notes="asked for invoice")  # unmapped: the same own state as a
    logged = {"7": [LoggedState(1, "S", a), LoggedState(2, "U", b), LoggedState(3, "U", c)]}
    versions = [
        _version(5, _sandbox_data(customers, a)),
        # A sale changed the aggregates only: still state a.
        _version(6, _sandbox_data(customers, a, lifetime_value_cents=150_000, completed_orders=1)),
        _version(7, _sandbox_data(customers, b, lifetime_value_cents=150_000)),
        _version(8, _sandbox_data(customers, c)),
    ]
    # The sandbox holds no phone for a: Reach dropped the null.
    assert "phone" not in versions[0].data  # type: ignore[operator]
    report = _check(definition, "customers", versions, logged)
    assert report.ok and not report.unconverged, report
    assert (report.versions_checked, report.entities_checked) == (4, 1)

    # since_seq: only later versions are judged (convergence still reads the last one).
    assert _check(definition, "customers", versions, logged, since_seq=6).versions_checked == 2


def test_a_customer_going_back_is_reported_with_both_seqs(definition: SyncDefinition) -> None:
    customers = definition.resources["customers"]
    a, b = _customer(), _customer(first_name="Grace")
    logged = {"7": [LoggedState(1, "S", a), LoggedState(4, "U", b)]}
    versions = [
        _version(5, _sandbox_data(customers, a), arrived_at=100.0),
        _version(6, _sandbox_data(customers, b), arrived_at=101.0),
        _version(9, _sandbox_data(customers, a), arrived_at=102.0),
    ]
    report = _check(definition, "customers", versions, logged)
    assert not report.never_existed
    (offence,) = report.backward
    assert (offence.resource, offence.tenant, offence.external_id) == (
        "customers",
        "merchant-1",
        "7",
    )
    assert (offence.version_seq, offence.previous_version_seq) == (9, 6)
    assert (offence.previous_log_seq, offence.earlier_log_seqs) == (4, (1,))
    assert "sandbox seq 9" in str(offence) and "row-log" in str(offence)
    # It arrived after the newer one: an older read sent later (not two sends reordered).
    assert offence.arrived_first is False and "sent after a newer one" in str(offence)
    reordered = [*versions[:2], _version(9, versions[2].data, arrived_at=100.5)]
    (offence,) = _check(definition, "customers", reordered, logged).backward
    assert offence.arrived_first is True and "out of arrival order" in str(offence)
    # And it stayed last: the sandbox does not hold the row's last state.
    (unconverged,) = report.unconverged
    assert (unconverged.last_version_seq, unconverged.last_log_seq) == (9, 4)


def test_formats_are_exact_a_state_formatted_otherwise_never_existed(
    definition: SyncDefinition,
) -> None:
    customers = definition.resources["customers"]
    a = _customer()
    data = _sandbox_data(customers, a)
    assert data["createdAt"] == "2025-03-01T12:00:00.123456Z"
    # The same moment in milliseconds, an opt-in as a string: not what reach-sync sends.
    wrong_time = {**data, "createdAt": "2025-03-01T12:00:00.123Z"}
    wrong_bool = {**data, "marketingOptIn": "true"}
    logged = {"7": [LoggedState(1, "S", a)]}
    versions = [
        _version(5, data),
        _version(6, wrong_time),
        _version(7, wrong_bool),
        _version(8, data),
    ]
    report = _check(definition, "customers", versions, logged)
    assert [o.version_seq for o in report.never_existed] == [6, 7]
    assert not report.backward and not report.unconverged
    # A zone other than UTC in the database is the same instant.
    other_zone = _customer(created_at=CREATED.astimezone(timezone(timedelta(hours=2))))
    logged = {"7": [LoggedState(1, "S", other_zone)]}
    assert _check(definition, "customers", [_version(5, data)], logged).ok


def test_transactions_deletes_reinserts_and_moves_between_tenants(
    definition: SyncDefinition,
) -> None:
    transactions = definition.resources["transactions"]
    sale = {
        "id": 3,
        "merchant_id": 1,
        "customer_id": 7,
        "status": "pending",
        "amount_cents": 1999,
        "currency": "USD",
        "created_at": CREATED,
        "updated_at": CREATED,
    }
    done = {**sale, "status": "completed"}
    again = {**sale, "amount_cents": 500}
    logged = {
        "3": [
            LoggedState(1, "I", sale),
            LoggedState(2, "U", done),
            LoggedState(3, "D", None),
            LoggedState(4, "I", again),
        ]
    }

    def data(row: dict[str, Any]) -> dict[str, Any]:
        return _sandbox_data(transactions, row)

    assert data(sale)["transactionTotal"] == 19.99
    good = [
        _version(10, data(sale), "shop_transactions", external_id="3"),
        _version(11, data(done), "shop_transactions", external_id="3"),
        _version(12, None, "shop_transactions", external_id="3"),
        _version(13, data(again), "shop_transactions", external_id="3"),
    ]
    report = _check(definition, "transactions", good, logged)
    assert report.ok and not report.unconverged and report.versions_checked == 4

    # The sale moves to merchant 2 (its customer's tenant changed): merchant 1 must see a delete.
    moved = {**again, "merchant_id": 2}
    logged["3"].append(LoggedState(5, "U", moved))
    in_2 = _sandbox_data(transactions, moved, tenant="merchant-2")
    versions = [
        *good,
        _version(14, None, "shop_transactions", external_id="3"),
        _version(15, in_2, "shop_transactions", external_id="3", tenant="merchant-2"),
    ]
    report = _check(definition, "transactions", versions, logged)
    assert report.ok and not report.unconverged, report
    assert report.entities_checked == 2
    # Without the delete in merchant 1, it did not converge there.
    report = _check(definition, "transactions", [*good, versions[-1]], logged)
    assert [(u.tenant, u.reason) for u in report.unconverged] == [
        (
            "merchant-1",
            "the row is gone (or in another tenant) but its last version is not a delete",
        )
    ]


def test_a_row_never_applied_and_a_bad_row_are_not_converged(definition: SyncDefinition) -> None:
    bad = _customer(id=8, created_at="not a time")
    logged = {"7": [LoggedState(1, "I", _customer())], "8": [LoggedState(2, "I", bad)]}
    report = _check(definition, "customers", [], logged)
    assert report.unprojectable_states == 1
    reasons = {u.external_id: u.reason for u in report.unconverged}
    assert reasons == {
        "7": "the row's last state was never applied",
        "8": "the row's last state cannot be projected (a bad row)",
    }


def test_qualified_table_names() -> None:
    assert qualified("customers") == ("public", "customers")
    assert qualified("shop.customers") == ("shop", "customers")


# --- match_audit ---------------------------------------------------------------------------------


def _topic(record: AuditRecord) -> AuditRecord:
    """As read back from the topic (exact numbers come back as Decimals)."""
    return decode_audit(encode_audit(record))


def _sent(
    definition: SyncDefinition, row: Mapping[str, Any], batch_id: str | None, **kw: Any
) -> tuple[dict[str, Any], AuditRecord]:
    """The sandbox's data after this send, and the audit record reach-sync writes for it."""
    customers = definition.resources["customers"]
    projected = project(
        customers, {"lifetime_value_cents": 0, "completed_orders": 0, **row, "tenant": "merchant-1"}
    )
    record = upsert_record(
        "customers", customers, "127.0.0.1:9", Sent(projected, 1, batch_id, **kw)
    )
    data = {k: v for k, v in orjson.loads(orjson.dumps(projected.record)).items() if v is not None}
    return data, _topic(record)


def test_a_batch_version_is_accounted_for_by_its_batch_id_and_payload(
    definition: SyncDefinition,
) -> None:
    data, record = _sent(definition, _customer(), "batch-1")
    version = _version(5, data, batch_id="batch-1")
    report = match_audit([version], definition.resources, [record])
    assert (report.by_batch, report.unaudited, report.versions_checked) == (1, [], 1)
    assert record.values["customerId"] == "7" and "email" not in record.values

    # Another batch of the same state does not account for this one.
    other = match_audit([_version(5, data, batch_id="batch-2")], definition.resources, [record])
    (missing,) = other.unaudited
    assert missing.same_state_audited and "batch" in missing.reason
    assert not other.states_never_audited
    # The same batch with another payload does not either.
    changed = {**data, "firstName": "Grace"}
    (wrong,) = match_audit(
        [_version(5, changed, batch_id="batch-1")], definition.resources, [record]
    ).unaudited
    assert "another payload" in wrong.reason and not wrong.same_state_audited


def test_a_lost_batch_answer_is_accounted_for_by_its_unconfirmed_record(
    definition: SyncDefinition,
) -> None:
    data, record = _sent(definition, _customer(), None, unconfirmed=True, in_batch=True)
    assert (record.mode, record.batch_id, record.outcome) == ("batch", None, "unconfirmed")
    report = match_audit([_version(5, data, batch_id="batch-9")], definition.resources, [record])
    assert report.by_unconfirmed == 1 and report.ok


def test_a_send_whose_outcome_was_never_audited_is_accounted_for_by_its_sending_record(
    definition: SyncDefinition,
) -> None:
    data, lost = _sent(definition, _customer(), None, unconfirmed=True, in_batch=True)
    sending = msgspec.structs.replace(lost, outcome="sending")
    report = match_audit([_version(5, data, batch_id="batch-9")], definition.resources, [sending])
    assert (report.by_sending, report.by_batch) == (1, 0) and report.ok
    # An outcome record is preferred when there is one.
    _, accepted = _sent(definition, _customer(), "batch-9")
    both = match_audit(
        [_version(5, data, batch_id="batch-9")], definition.resources, [sending, accepted]
    )
    assert (both.by_sending, both.by_batch) == (0, 1)
    # A sending record of another state, or of the other mode, accounts for nothing.
    changed = {**data, "firstName": "Grace"}
    assert match_audit(
        [_version(5, changed, batch_id="batch-9")], definition.resources, [sending]
    ).unaudited
    assert match_audit(
        [_version(5, data, request_id="req-1")], definition.resources, [sending]
    ).unaudited


def test_a_single_write_is_accounted_for_by_a_realtime_record_of_its_payload(
    definition: SyncDefinition,
) -> None:
    data, record = _sent(definition, _customer(), None)
    assert (record.mode, record.batch_id, record.outcome) == ("realtime", None, "accepted")
    version = _version(5, data, request_id="req-1")
    assert match_audit([version], definition.resources, [record]).by_single_write == 1
    # A batch's record does not account for a single write, nor one of another payload.
    _, in_batch = _sent(definition, _customer(), "batch-1")
    _, other = _sent(definition, _customer(first_name="Grace"), None)
    report = match_audit([version], definition.resources, [in_batch, other])
    (missing,) = report.unaudited
    assert missing.reason.startswith("no single-write audit record") and missing.same_state_audited
    # A parked single write cannot exist; only accepted and unconfirmed count.
    _, lost = _sent(definition, _customer(), None, unconfirmed=True)
    assert match_audit([version], definition.resources, [lost]).by_unconfirmed == 1


def test_values_must_agree_with_the_version(definition: SyncDefinition) -> None:
    data, record = _sent(definition, _customer(), "batch-1")
    lying = AuditRecord(
        **{
            **{f: getattr(record, f) for f in record.__struct_fields__},
            "values": {**record.values, "customerId": "8"},
        }
    )
    (missing,) = match_audit(
        [_version(5, data, batch_id="batch-1")], definition.resources, [lying]
    ).unaudited
    assert "values disagree" in missing.reason


def test_deletes_need_a_delete_record_of_their_batch(definition: SyncDefinition) -> None:
    customers = definition.resources["customers"]
    deleted = _topic(
        delete_record("customers", customers, "h", Removed("merchant-1", "7", 1, "del-1"))
    )
    version = _version(6, None, batch_id="del-1")
    report = match_audit([version], definition.resources, [deleted])
    assert (report.deletes, report.by_batch, report.unaudited) == (1, 1, [])
    _, upsert = _sent(definition, _customer(), "del-1")
    (missing,) = match_audit([version], definition.resources, [upsert]).unaudited
    assert "delete" in missing.reason
    lost = _topic(
        delete_record("customers", customers, "h", Removed("merchant-1", "7", 1, None, True))
    )
    assert match_audit([version], definition.resources, [lost]).by_unconfirmed == 1


def test_nothing_of_the_entity_or_another_tenant_is_missing(definition: SyncDefinition) -> None:
    data, record = _sent(definition, _customer(), "batch-1")
    (missing,) = match_audit(
        [_version(5, data, batch_id="batch-1")], definition.resources, []
    ).unaudited
    assert missing.reason == "no audit record of this entity" and "sandbox seq 5" in str(missing)
    # The history names tenants as reach-sync does; a Reach tenant id would not match.
    elsewhere = _version(5, data, batch_id="batch-1", tenant="tenant-1")
    assert match_audit([elsewhere], definition.resources, [record]).unaudited
    # Versions of schemas outside the definition are not judged.
    foreign = _version(5, data, "customers", batch_id="batch-1")
    assert match_audit([foreign], definition.resources, []).versions_checked == 0


def test_an_accepted_record_of_an_applied_batch_must_have_its_version(
    definition: SyncDefinition,
) -> None:
    data, record = _sent(definition, _customer(), "batch-1")
    _, other = _sent(definition, _customer(id=8), "batch-1")
    report = match_audit(
        [_version(5, data, batch_id="batch-1")], definition.resources, [record, other]
    )
    assert not report.unaudited
    (phantom,) = report.audited_not_applied
    assert (phantom.external_id, phantom.batch_id) == ("8", "batch-1")
    assert not report.ok


# --- leaks ---------------------------------------------------------------------------------------


def test_a_planted_secret_is_found_by_kind_and_line_never_by_value(tmp_path: Path) -> None:
    secret = "s3cr3t-jwt-value-0123456789"
    log = tmp_path / "syncer.log"
    lines = [
        '{"level": "info", "message": "window done"}',
        '{"level": "error", "message": "auth failed with key s3cr3t-jwt-value-0123456789"}',
        '{"message": "note: \\"called about \\u00e9delivery\\""}',
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJwYXJ0bmVySWQiOiJ4In0.c2lnbmF0dXJlLXBhcnQ",
        "redacted: ***",
    ]
    log.write_text("\n".join(lines) + "\n")
    audit: list[str | bytes] = [
        '{"values": {"customerId": "7"}}',
        b'{"values": {"notes": "prefers email"}}',
    ]
    report = leaked_secrets(
        [log, tmp_path / "absent.log"],
        audit,
        {"the Reach JWT secret": secret, "empty": ""},
        ["called about \u00e9delivery", "prefers email"],
    )
    assert [(f.kind, f.where, f.line) for f in report.found] == [
        ("secret: the Reach JWT secret", str(log), 2),
        ("unmapped PII", str(log), 3),
        ("credential-shaped: a JWT", str(log), 4),
        ("unmapped PII", "audit record", 2),
    ]
    assert (report.files, report.lines, report.audit_records) == (1, 5, 2)
    assert report.missing_files == [str(tmp_path / "absent.log")]
    assert secret not in repr(report) and "prefers email" not in repr(report)
    assert not leaked_secrets([], ['{"ok": 1}'], {"x": secret}, []).found


def test_many_values_are_scanned_in_one_pass(tmp_path: Path, definition: SyncDefinition) -> None:
    emails = [f"user.{n:08x}@example.com" for n in range(5000)]
    log = tmp_path / "router.log"
    log.write_text("x" * 50 + "\nsent to user.00000abc@example.com today\n+1555\n")
    customers = definition.resources["customers"]
    _, record = _sent(definition, _customer(), "b")
    assert not leaked_secrets([], [AuditedRecord(0, 3, record)], {}, [], emails).found
    leaky = AuditRecord(
        **{
            **{f: getattr(record, f) for f in record.__struct_fields__},
            "values": {"email": emails[1]},
        }
    )
    report = leaked_secrets([log], [AuditedRecord(2, 17, leaky)], {"short": "+1555"}, [], emails)
    assert [str(f) for f in report.found] == [
        f"mapped PII (pii: send/hash) in {log}:2",
        f"secret: short in {log}:3",
        "mapped PII (pii: send/hash) in audit partition 2:17",
    ]
    assert customers.reach_schema == "shop_customers"


def test_dsn_password() -> None:
    assert dsn_password("postgresql://reach:pw%40x@127.0.0.1:5432/db") == "pw@x"
    assert dsn_password("host=127.0.0.1 user=reach password=abc dbname=x") == "abc"
    assert dsn_password("postgresql://reach@127.0.0.1/db") is None


# --- offsets never committed before the outcome (commits.py) --------------------------------------


@dataclass(frozen=True)
class _DirtyMessage:
    """A dirty-topic message as the check reads it (``partition``, ``offset``, ``value``)."""

    at_partition: int
    at_offset: int
    raw: bytes

    def partition(self) -> int:
        return self.at_partition

    def offset(self) -> int:
        return self.at_offset

    def value(self) -> bytes:
        return self.raw


def _dirty(offset: int, table: str, source_ts: float, entity: int = 7) -> _DirtyMessage:
    cause = Cause("cdc", table=table, op="u", source_ts_ms=int(source_ts * 1000))
    return _DirtyMessage(0, offset, encode_dirty(DirtyKey("customers", entity, cause)))


def _judge_commits(
    definition: SyncDefinition,
    logged: dict[str, list[LoggedState]],
    versions: list[Version],
    messages: list[_DirtyMessage],
    commits_seen: list[tuple[float, int]],
    dead_lettered: frozenset[tuple[str, str]] = frozenset(),
) -> CommitReport:
    customers = definition.resources["customers"]
    judge = EntityJudge(
        customers, own_fields(customers, CUSTOMER_COLUMNS), logged, versions, _tenant_of
    )
    watch = CommitWatch()
    for at, offset in commits_seen:
        watch.note(at, {0: offset})
    return committed_before_outcome(
        watch,
        cast("list[Message]", messages),
        {"customers": judge},
        {"customers": "public.customers"},
        set(dead_lettered),
    )


def test_a_key_committed_after_reach_applied_its_state_or_a_later_one_is_fine(
    definition: SyncDefinition,
) -> None:
    customers = definition.resources["customers"]
    a, b, c = _customer(), _customer(first_name="Grace"), _customer(first_name="Ida")
    logged = {"7": [LoggedState(1, "S", a, 100.0), LoggedState(2, "U", b, 110.0)]}
    logged["7"].append(LoggedState(3, "U", c, 120.0))
    versions = [
        _version(5, _sandbox_data(customers, a), applied_at=101.0),
        # b was never sent alone: c came first (coalesced), and that is as good.
        _version(6, _sandbox_data(customers, c), applied_at=121.0),
    ]
    # The key for b (committed at 110.004) is committed at 122, with c in Reach.
    messages = [_dirty(0, "public.customers", 110.004)]
    report = _judge_commits(definition, logged, versions, messages, [(122.0, 1)])
    assert (report.keys_judged, report.early) == (1, [])


def test_a_key_committed_while_reach_still_held_an_older_state_is_an_early_commit(
    definition: SyncDefinition,
) -> None:
    customers = definition.resources["customers"]
    a, b = _customer(), _customer(first_name="Grace")
    logged = {"7": [LoggedState(1, "S", a, 100.0), LoggedState(2, "U", b, 110.0)]}
    versions = [
        _version(5, _sandbox_data(customers, a), applied_at=101.0),
        _version(6, _sandbox_data(customers, b), applied_at=115.0),
    ]
    messages = [_dirty(0, "public.customers", 110.004), _dirty(1, "public.customers", 110.004)]
    # Offset 0 seen committed at 112: Reach still held a. Offset 1 at 116: b was applied.
    report = _judge_commits(definition, logged, versions, messages, [(112.0, 1), (116.0, 2)])
    (early,) = report.early
    assert (early.offset, early.wanted_log_seq, early.held_version_seq) == (0, 2, 5)
    assert "held sandbox seq 5, not row-log state 2" in str(early)
    assert report.keys_judged == 2
    # With nothing applied yet, Reach held nothing.
    (early,) = _judge_commits(definition, logged, [], messages[:1], [(112.0, 1)]).early
    assert early.held_version_seq is None and "held nothing" in str(early)


def test_a_delete_is_settled_when_reach_holds_nothing_or_a_delete(
    definition: SyncDefinition,
) -> None:
    customers = definition.resources["customers"]
    a = _customer()
    logged = {"7": [LoggedState(1, "S", a, 100.0), LoggedState(2, "D", None, 110.0)]}
    deleted = [
        _version(5, _sandbox_data(customers, a), applied_at=101.0),
        _version(6, None, applied_at=111.0),
    ]
    messages = [_dirty(0, "public.customers", 110.0)]
    assert not _judge_commits(definition, logged, deleted, messages, [(112.0, 1)]).early
    assert not _judge_commits(definition, logged, [], messages, [(112.0, 1)]).early
    # Still holding a at the commit: early.
    assert _judge_commits(definition, logged, deleted[:1], messages, [(112.0, 1)]).early


def test_keys_the_check_cannot_judge_are_counted_apart(definition: SyncDefinition) -> None:
    a = _customer()
    logged = {"7": [LoggedState(1, "S", a, 100.0)]}
    messages = [
        _dirty(0, "public.transactions", 105.0),  # a sale: not the customer's own row
        _dirty(1, "public.customers", 99.0),  # before anything was logged
        _dirty(2, "public.customers", 105.0),  # committed, but its entity was dead-lettered
        _dirty(3, "public.customers", 105.0),  # never seen committed
    ]
    report = _judge_commits(
        definition, logged, [], messages, [(106.0, 3)], frozenset({("customers", "7")})
    )
    assert report.keys_judged == 0 and not report.early
    assert (report.keys_without_own_cause, report.keys_not_committed) == (0, 1)
    assert report.keys_of_dead_lettered == 3
    report = _judge_commits(definition, logged, [], messages, [(106.0, 3)])
    assert (report.keys_without_own_cause, report.keys_judged) == (2, 1)
    assert report.early  # Reach held nothing of customer 7 at 106


def test_the_watch_keeps_each_move_of_a_committed_offset_once() -> None:
    watch = CommitWatch()
    watch.note(1.0, {0: 5, 1: -1001})  # partition 1: nothing committed yet
    watch.note(2.0, {0: 5, 1: 3})
    watch.note(3.0, {0: 9, 1: 3})
    assert watch.seen[0] == [(1.0, 5), (3.0, 9)] and watch.seen[1] == [(2.0, 3)]
    assert watch.first_seen_past(0, 4) == 1.0 and watch.first_seen_past(0, 5) == 3.0
    assert watch.first_seen_past(0, 9) is None and watch.moves() == 3
