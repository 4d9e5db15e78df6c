"""One invalid record among 999 good ones: 999 land, 1 is dead-lettered with the sandbox's error,
the partition keeps flowing; once the row is fixed in the database, ``dlq replay`` lands it.

The invalid value is real data: an email the database accepts (``customers.email`` is plain
text) but Reach's ``shop_customers`` schema refuses (``format: email``), so the sandbox answers
the batch with a 400 naming that record, and reach-sync isolates it.

The fix must land through the replay alone, so the router must not see the fix's own change
event: the first run (router and syncer) is stopped before the row is fixed, and after the
replay only a syncer (``run --role syncer``, same consumer group) runs. It reads the dirty topic
from the group's committed offsets, where the replayed key is the only new one.

A second, smaller run checks that the dead letter keeps Reach's answer: its status and body.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from reach_devstack.stack import SHOP_REACH_SCHEMAS, StackEndpoints
from reach_devstack.verify import Difference, verify_sandbox
from reach_sandbox.validation import FieldError, RecordValidator

from consumer.cli.main import main
from consumer.config import SyncDefinition
from consumer.records.dlq_read import Filter
from consumer.router.dirty import dirty_message_key
from tests.e2e.conftest import EXAMPLE, TENANTS, shop_env
from tests.e2e.helpers import (
    REJOIN_S,
    PipelineProcess,
    Sandbox,
    SyncerProcess,
    assert_converged,
    dead_letters_matching,
    dirty_partition_of,
    insert_customer,
    pipeline_thread,
    sql,
    wait_for,
    wait_quiet,
)

SCHEMA = "shop_customers"
COUNT = 1000
CHUNK = 100  # customers per database transaction
BAD_INDEX = 417
BAD_EMAIL = "not-an-email"
NEIGHBOURS = 5  # later changes on the invalid entity's dirty-topic partition
LAND_S = 180.0


def _insert_customers(dsn: str, run_id: str) -> list[tuple[int, str, str]]:
    """COUNT new customers of the three merchants in turn, one with BAD_EMAIL; (id, tenant,
    email) each, in insertion order."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        merchants = conn.execute("SELECT id, external_id FROM merchants ORDER BY id").fetchall()
        tenant_of: dict[int, str] = {int(m[0]): str(m[1]) for m in merchants}
        created: list[tuple[int, str, str]] = []
        for start in range(0, COUNT, CHUNK):
            indexes = range(start, min(COUNT, start + CHUNK))
            owners = [merchants[i % len(merchants)] for i in indexes]
            emails = [
                BAD_EMAIL if i == BAD_INDEX else f"many-{run_id}-{i}@example.com" for i in indexes
            ]
            with conn.transaction():
                rows = conn.execute(
                    "INSERT INTO customers (merchant_id, email, last_name)"
                    " SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[])"
                    " RETURNING id, merchant_id, email",
                    ([m[0] for m in owners], emails, [f"many-{run_id}"] * len(emails)),
                ).fetchall()
            created += [(int(r[0]), tenant_of[int(r[1])], str(r[2])) for r in rows]
    return created


def _sandbox_refusal(email: str) -> FieldError:
    """What the sandbox says about a customer with this email: its own validator, over the
    shop_customers schema the local stack gives it."""
    schemas = yaml.safe_load(SHOP_REACH_SCHEMAS.read_text())
    schema = next(s for s in schemas if s["name"] == SCHEMA)
    validator = RecordValidator(schema["schema"], schema["external_id_field"], assert_formats=True)
    _, errors = validator.validate({"customerId": "1", "email": email}, 0, False)
    assert len(errors) == 1, errors
    return errors[0]


def _differences(definition: SyncDefinition, endpoints: StackEndpoints) -> list[Difference]:
    return asyncio.run(
        verify_sandbox(definition, endpoints.sandbox_url, endpoints.sandbox_admin_token, TENANTS)
    )


def _only_missing(differences: list[Difference], tenant: str, external_id: str) -> bool:
    """The sandbox equals the projection except that one customer is missing."""
    return all(
        (d.missing, d.extra, d.different) == ([(tenant, external_id)], [], [])
        if d.resource == "customers"
        else d.equal
        for d in differences
    )


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``reach-sync ...`` in this process (the environment holds the test's definition)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _dead_letters(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """``reach-sync dlq list --kind record --json``: the records Reach refused, on the test's
    topic. Event dead letters are left out: the pipeline reads the shared shop topics from the
    start, where other tests (test_bad_events) put malformed events on purpose."""
    argv = ("dlq", "list", "--config", str(EXAMPLE), "--kind", "record", "--json")
    code, out, err = _cli(capsys, *argv)
    assert code == 0, (code, out, err)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _field(sandbox: Sandbox, tenant: str, external_id: str, field: str) -> Any:
    """One field of a customer as the sandbox has it now (None when absent)."""
    return (sandbox.current(tenant, SCHEMA, external_id) or {}).get(field)


def test_one_invalid_record_is_dead_lettered_and_lands_after_fix_and_replay(
    shop_stack: StackEndpoints,
    unique: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = shop_stack.postgres_dsn
    sandbox = Sandbox.of(shop_stack)
    name = unique("invalid")
    run_id = uuid.uuid4().hex[:8]
    env = shop_env(shop_stack, name)
    for variable, value in env.items():  # what `reach-sync dlq ...` reads the definition with
        monkeypatch.setenv(variable, value)
    first = PipelineProcess(shop_stack, name, tmp_path, live_stats=True)
    definition = first.definition
    syncer = SyncerProcess(name, env, tmp_path / f"{name}.syncer.log")
    bad: tuple[int, str, str] | None = None
    try:
        # A customer written before the start: once it is in the sandbox, the new pipeline has
        # read past the history of the shop.
        marker, marker_tenant = insert_customer(dsn, 2, f"marker-{run_id}@example.com")
        first.start()
        wait_for(
            lambda: sandbox.history(marker_tenant, SCHEMA, str(marker)),
            90,
            "the pipeline to catch up",
            guard=first.check_alive,
        )
        wait_quiet(first.counters, quiet_s=2.0, timeout_s=90)
        before = first.counters()

        customers = _insert_customers(dsn, run_id)
        bad = next(c for c in customers if c[2] == BAD_EMAIL)
        bad_id, bad_tenant, _ = bad
        external_id = str(bad_id)

        # 999 land (and everything else equals the projection); the invalid one does not.
        wait_for(
            lambda: _only_missing(_differences(definition, shop_stack), bad_tenant, external_id),
            LAND_S,
            "the 999 valid customers in the sandbox, and only the invalid one missing",
            guard=first.check_alive,
        )
        # Exactly one dead letter: that entity, with the sandbox's reason.
        letters = wait_for(lambda: _dead_letters(capsys), 60, "the dead letter")
        assert len(letters) == 1, letters
        letter = letters[0]
        record = letter["record"]
        assert (letter["kind"], letter["resource"], str(letter["id"]), letter["tenant"]) == (
            "record",
            "customers",
            external_id,
            bad_tenant,
        ), letter
        assert letter["error_class"] == "consumer.errors.BadRecord", letter
        # The reason is the sandbox's: its validator's message about the email field.
        refusal = _sandbox_refusal(BAD_EMAIL)
        assert refusal.field == "email" and refusal.message in letter["reason"], letter
        assert "email" in letter["reason"], letter
        # The PII policy holds in the dead letter: the email is sent, so only the hash is kept.
        assert record["payload"] is None and record["payload_sha256"], letter
        assert BAD_EMAIL not in json.dumps(letter), letter

        # The partition keeps flowing: later changes of its other entities still land.
        partition, neighbours = dirty_partition_of(
            shop_stack.bootstrap_servers,
            definition.topics.dirty,
            {dirty_message_key("customers", c[0]) for c in customers},
            dirty_message_key("customers", bad_id),
        )
        assert len(neighbours) >= NEIGHBOURS, (partition, neighbours)
        later = [int(k.decode().split("/")[1]) for k in neighbours[:NEIGHBOURS]]
        tenants = {c[0]: c[1] for c in customers}
        sql(
            dsn,
            *(
                ("UPDATE customers SET first_name = %s WHERE id = %s", (f"later-{run_id}", c))
                for c in later
            ),
        )
        wait_for(
            lambda: all(
                _field(sandbox, tenants[c], str(c), "firstName") == f"later-{run_id}" for c in later
            ),
            60,
            f"customers {later} (dirty-topic partition {partition}) updated in the sandbox",
            guard=first.check_alive,
        )
        wait_quiet(first.counters, quiet_s=2.0, timeout_s=60)
        during = {k: v - before.get(k, 0) for k, v in first.counters().items()}
        assert during["dead_lettered"] == 1, during
        assert first.terminate() == 0, first.log()[-4000:]

        # Fix the row; only a syncer runs from here on: the fix's change event is never routed.
        fixed = f"fixed-{run_id}@example.com"
        sql(dsn, ("UPDATE customers SET email = %s WHERE id = %s", (fixed, bad_id)))
        code, out, err = _cli(
            capsys,
            "dlq",
            "replay",
            "--config",
            str(EXAMPLE),
            "--resource",
            "customers",
            "--id",
            external_id,
        )
        assert code == 0, (code, out, err)
        assert "re-enqueued 1 dirty key" in out, out

        syncer.process.start()
        wait_for(
            lambda: _field(sandbox, bad_tenant, external_id, "email") == fixed,
            REJOIN_S + 90,
            "the fixed customer in the sandbox after the replay",
            guard=syncer.check_alive,
        )
        counters = syncer.terminate()
        # The replayed key was the syncer's only work, and it sent exactly that customer.
        assert (counters["dirty_keys"], counters["sent"], counters["dead_lettered"]) == (
            1,
            1,
            0,
        ), counters
        assert_converged(definition, shop_stack)
        # Nothing was removed from the dead-letter topic, and nothing was added.
        assert [letter["offset"] for letter in _dead_letters(capsys)] == [letter["offset"]]
    finally:
        first.ensure_stopped()
        syncer.process.stop(grace_s=90)
        if bad is not None:  # never leave an invalid row to the tests that come after
            sql(
                dsn,
                (
                    "UPDATE customers SET email = %s WHERE id = %s AND email = %s",
                    (f"cleanup-{run_id}@example.com", bad[0], BAD_EMAIL),
                ),
            )


def test_the_dead_letter_of_a_refused_record_holds_reachs_answer(
    shop_stack: StackEndpoints, unique: Callable[[str], str]
) -> None:
    """A record dead letter carries Reach's answer: its HTTP status and its body (bounded), as
    schemas/dead-letter.schema.json and the README's "Dead letters" say."""
    dsn = shop_stack.postgres_dsn
    run_id = uuid.uuid4().hex[:8]
    customer, tenant = insert_customer(dsn, 3, BAD_EMAIL, last_name=f"refused-{run_id}")
    try:
        with pipeline_thread(shop_stack, unique("refused")) as running:
            chosen = Filter(resource="customers", entity_id=str(customer))
            read = wait_for(
                lambda: dead_letters_matching(running.definition, chosen),
                90,
                "the refused customer's dead letter",
                guard=running.check_alive,
            )
        assert len(read) == 1, read
        record = read[0].record
        assert record is not None and record.tenant == tenant, read
        # Reach's answer: its status, and its body naming the refused field.
        assert record.http_status == 400, record
        assert record.body is not None and "email" in record.body, record
    finally:
        sql(
            dsn,
            (
                "UPDATE customers SET email = %s WHERE id = %s AND email = %s",
                (f"cleanup-{run_id}@example.com", customer, BAD_EMAIL),
            ),
        )
