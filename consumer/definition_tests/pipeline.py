"""One case through the whole pipeline (``reach-sync test --e2e``): Debezium captures the
case's database into topics of the case's own, and reach-sync runs as in production (router,
syncer, scheduler; ``run_service`` in a thread) until the case ends.

A step is over once Debezium has written the step's changes, the router and the syncer have
committed everything before the topics' ends, and the audit and dead-letter topics have been
still for a moment. Its outcomes are read from those topics: an audit upsert is ``sent`` (the
record is what the sandbox holds now), an audit delete ``deleted``, a dead letter
``dead_letter``; an entity with none of them was not sent (unchanged, or never made dirty).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
from confluent_kafka import Consumer, TopicPartition
from psycopg import conninfo

from consumer.config import SyncDefinition, Topics
from consumer.definition_tests.direct import as_sent
from consumer.definition_tests.observed import Observations, Observed
from consumer.errors import ConfigurationError
from consumer.kafka import consumer_settings
from consumer.records.audit import SENDING, decode_audit
from consumer.records.deadletter import DeadLetterRecord
from consumer.records.dlq_read import MissingTopic, end_offsets, messages_to_end, reader_settings

__all__ = ["PipelineCase", "for_pipeline"]

STEP_TIMEOUT_S = 120.0
# How long the outcome topics must stay still, once everything is committed, to call a step over.
QUIET_S = 1.5
# How long to wait for Debezium to write a step's first change before going on without it (a
# step may change no captured table).
CAPTURE_WAIT_S = 20.0
POLL_S = 0.2
DEBEZIUM_READY_S = 180.0
SERVICE_STOP_S = 60.0
_dead_letter = msgspec.json.Decoder(DeadLetterRecord)
# The local broker's session timeout (it needs a short one to rejoin fast).
LOCAL_SESSION_TIMEOUT_MS = 6000


def for_pipeline(definition: SyncDefinition, case: str) -> SyncDefinition:
    """The definition on the case's own topics and groups, reading the case's Debezium topics."""
    kafka = definition.source.kafka
    tables = sorted(definition.trigger_tables())
    pattern = "^" + re.escape(case) + r"\.(" + "|".join(re.escape(t) for t in tables) + ")$"
    source = definition.source.model_copy(
        update={
            "kafka": kafka.model_copy(
                update={
                    "group_id": f"reach-sync-test.{case}",
                    "topics": (),
                    "topic_pattern": pattern,
                    "session_timeout_ms": LOCAL_SESSION_TIMEOUT_MS,
                    "leave_group_on_close": False,
                }
            )
        }
    )
    names = {
        "dirty": f"{case}.reach-sync.dirty",
        "dead_letter": f"{case}.reach-sync.dead-letter",
        "audit": f"{case}.reach-sync.audit",
        "scheduled": f"{case}.reach-sync.scheduled",
    }
    topics = Topics.model_validate({**definition.topics.model_dump(), **names})
    return definition.model_copy(update={"source": source, "topics": topics, "health": None})


def _ends(consumer: Consumer, topic: str) -> dict[int, int]:
    try:
        return end_offsets(consumer, topic)
    except MissingTopic:
        return {}


def _lag(ends_from: Consumer, group: Consumer, topics: list[str]) -> int:
    """Messages of ``topics`` that ``group`` (a consumer of that group that never joins it)
    has not committed yet."""
    total = 0
    for topic in topics:
        ends = _ends(ends_from, topic)
        if not ends:
            continue
        committed = group.committed([TopicPartition(topic, p) for p in ends], timeout=10)
        for tp in committed:
            total += max(0, ends[tp.partition] - max(tp.offset, 0))
    return total


class PipelineCase:
    """The pipeline of one case: Debezium on its database, reach-sync on its topics."""

    def __init__(
        self, definition: SyncDefinition, case: str, state_dir: Path, admin: httpx.Client
    ) -> None:
        self.definition = definition
        self._case = case
        self._state_dir = state_dir
        self._admin = admin
        kafka = definition.source.kafka
        self._reader = Consumer(reader_settings(kafka))
        # The stages' committed offsets, read by consumers of their groups that never join.
        self._router_group, self._syncer_group = (
            Consumer(consumer_settings(kafka, group, **{"allow.auto.create.topics": False}))
            for group in (f"{kafka.group_id}.router", f"{kafka.group_id}.syncer")
        )
        self._source_topics = [f"{case}.{t}" for t in sorted(definition.trigger_tables())]
        # What stopped the service, if it stopped: the step waiting on it fails with it.
        self._failure: list[BaseException] = []

    @contextmanager
    def _logging_to_file(self) -> Iterator[None]:
        """The service's logs go to the case's log file, not between the verdicts."""
        root = logging.getLogger()
        saved = root.handlers[:]
        handler = logging.FileHandler(self._state_dir / "reach-sync.log")
        if saved:
            handler.setFormatter(saved[0].formatter)
        root.handlers = [handler]
        try:
            yield
        finally:
            root.handlers = saved
            handler.close()

    @contextmanager
    def running(self) -> Iterator[PipelineCase]:
        from reach_devstack.debezium import DebeziumSettings, debezium_command, is_ready
        from reach_devstack.process import ManagedProcess, ProcessSpec, wait_until

        from consumer.service import run_service

        dsn = conninfo.conninfo_to_dict(self.definition.source.database.dsn.get_secret_value())
        state = self._state_dir / "debezium"
        state.mkdir(parents=True, exist_ok=True)
        password = state / "pg-password"
        password.write_text(str(dsn["password"]))
        password.chmod(0o600)
        settings = DebeziumSettings(
            bootstrap_servers=self.definition.source.kafka.bootstrap_servers,
            pg_host="127.0.0.1",
            pg_port=int(str(dsn["port"])),
            pg_user=str(dsn["user"]),
            pg_password_file=password,
            pg_database=str(dsn["dbname"]),
            topic_prefix=self._case,
            tables=tuple(sorted(self.definition.trigger_tables())),
            state_dir=state,
            slot_name=self._case.replace("-", "_"),
            publication_name=self._case.replace("-", "_"),
        )
        debezium = ManagedProcess(
            ProcessSpec("debezium", debezium_command(settings), self._state_dir / "debezium.log")
        )
        stop = threading.Event()
        failure = self._failure

        def serve() -> None:
            try:
                run_service(self.definition, stop)
            except BaseException as exc:  # reported by the step that waits on it
                failure.append(exc)

        service = threading.Thread(target=serve, name=f"reach-sync {self._case}")
        with ExitStack() as stack:
            for reader in (self._reader, self._router_group, self._syncer_group):
                stack.callback(reader.close)
            debezium.start()  # its runner creates the topics it writes before it is ready
            stack.callback(debezium.stop)
            wait_until(debezium, lambda: is_ready(state), DEBEZIUM_READY_S)
            stack.enter_context(self._logging_to_file())
            service.start()
            stack.callback(service.join, SERVICE_STOP_S)
            stack.callback(stop.set)
            yield self

    def positions(self) -> dict[str, dict[int, int]]:
        topics = [self.definition.topics.audit, self.definition.topics.dead_letter]
        return {t: _ends(self._reader, t) for t in [*topics, *self._source_topics]}

    def wait_settled(self, before: dict[str, dict[int, int]]) -> None:
        """Until the step's changes went all the way through (module docstring)."""
        deadline = time.monotonic() + STEP_TIMEOUT_S
        captured_by = time.monotonic() + CAPTURE_WAIT_S
        while time.monotonic() < captured_by:
            now = self.positions()
            if any(now.get(t, {}) != before.get(t, {}) for t in self._source_topics):
                break
            time.sleep(POLL_S)
        quiet_since, last = time.monotonic(), self.positions()
        while True:
            if self._failure:
                raise ConfigurationError(f"reach-sync stopped: {self._failure[0]}")
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"the step did not settle within {STEP_TIMEOUT_S:.0f} s (see the logs in "
                    f"{self._state_dir})"
                )
            lag = _lag(self._reader, self._router_group, self._source_topics)
            lag += _lag(self._reader, self._syncer_group, [self.definition.topics.dirty])
            now = self.positions()
            if lag or now != last:
                quiet_since, last = time.monotonic(), now
            elif time.monotonic() - quiet_since >= QUIET_S:
                return
            time.sleep(POLL_S)

    def outcomes(self, before: dict[str, dict[int, int]]) -> Observations:
        found: Observations = {name: {} for name in self.definition.resources}
        audit, dead = self.definition.topics.audit, self.definition.topics.dead_letter
        for value in self._values(audit, before.get(audit, {})):
            record = decode_audit(value)
            if record.outcome == SENDING:  # written ahead of the request: not an outcome
                continue
            if record.kind == "delete":
                found[record.resource][record.id] = Observed("deleted", tenant=record.tenant)
            else:
                held = self._held(record.resource, record.tenant, record.reach_schema, record.id)
                found[record.resource][record.id] = Observed("sent", held, tenant=record.tenant)
        for value in self._values(dead, before.get(dead, {})):
            letter = _dead_letter.decode(value)
            reason = f"{letter.reason}: {letter.body}" if letter.body else letter.reason
            found[letter.resource][str(letter.id)] = Observed(
                "dead_letter", reason=reason, tenant=letter.tenant
            )
        return found

    def _values(self, topic: str, starts: dict[int, int]) -> Iterator[bytes]:
        ends = _ends(self._reader, topic)
        if not ends:
            return
        for message in messages_to_end(self._reader, topic, ends, starts):
            value = message.value()
            if value:
                yield value
        self._reader.unassign()

    def _held(self, name: str, tenant: str, schema: str, external_id: str) -> dict[str, Any]:
        """The record as sent, read back from what the sandbox holds now: reach-sync sends
        every mapped field, and Reach drops a field sent as null, so a field it lacks was
        sent as null."""
        response = self._admin.get(f"/_admin/resources/{tenant}/{schema}/{external_id}")
        if response.status_code != 200:
            return {}
        data = response.json()["resource"]["data"]
        held = as_sent(data) if isinstance(data, dict) else {}
        resource = self.definition.resources[name]
        fields = [*resource.mapping, *([resource.groups.field] if resource.groups else [])]
        return {field: held.get(field) for field in fields}


async def settle(case: PipelineCase, before: dict[str, dict[int, int]]) -> Observations:
    await asyncio.to_thread(case.wait_settled, before)
    return await asyncio.to_thread(case.outcomes, before)
