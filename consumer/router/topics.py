"""What the router checks and prepares before it reads a single event.

Both checks turn a silent, slow failure into a loud one at startup:

- A trigger that reads before images (``replica_identity: full``) on a table whose replica
  identity is not FULL would read Debezium's default values as foreign keys (customer 0) and
  miss the entity a row moved away from. That is a ``ConfigurationError`` naming the table and
  the fix. The reverse (FULL in the database, ``default`` in the definition) is safe, only less
  complete, and logged as a warning.
- The dirty and dead-letter topics (and the scheduled topic, when a resource is scheduled) are
  created if missing, so the first produce never waits on broker auto-creation (or fails where
  it is off) with default partition counts.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Mapping

import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.config import KafkaSource, SyncDefinition
from consumer.errors import ConfigurationError, Retryable

__all__ = ["check_replica_identity", "ensure_topics", "subscription"]

log = logging.getLogger(__name__)

# Dead letters are rare and read by people; one partition keeps them in the order they came,
# as Kafka Connect's dead-letter queue does.
DEAD_LETTER_PARTITIONS = 1
# Let the broker apply its default.replication.factor (KIP-464), whatever the cluster size.
BROKER_DEFAULT_REPLICATION = -1
# Topic creation and metadata are single round trips; a broker slower than this is unavailable.
ADMIN_TIMEOUT_S = 30.0
# A source database that does not answer a catalog query within this is unavailable.
DATABASE_CONNECT_TIMEOUT_S = 10

_IDENTITY_NAMES = {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}
_IDENTITY_SQL = (
    "SELECT c.relreplident FROM pg_catalog.pg_class c "
    "WHERE c.oid = to_regclass(format('%%I.%%I', %s::text, %s::text))"
)


def subscription(kafka: KafkaSource) -> list[str]:
    """Topic names, or the pattern; librdkafka treats a name starting with ``^`` as a regex."""
    if kafka.topic_pattern is None:
        return list(kafka.topics)
    pattern = kafka.topic_pattern
    return [pattern if pattern.startswith("^") else f"^{pattern}"]


def check_replica_identity(definition: SyncDefinition) -> None:
    """Compare each trigger table's replica identity with what its triggers assume."""
    wants_full = _tables_wanting_full(definition)
    actual = _replica_identities(definition, sorted(wants_full))
    problems = []
    for table, full in sorted(wants_full.items()):
        identity = actual.get(table)
        if identity is None:
            problems.append(f"{table}: no such table in the source database")
        elif full and identity != "f":
            problems.append(
                f"{table}: a trigger has replica_identity: full, but the database has REPLICA "
                f"IDENTITY {_IDENTITY_NAMES.get(identity, identity)}; run `ALTER TABLE {table} "
                "REPLICA IDENTITY FULL`, or set replica_identity: default on its triggers (a row "
                "moved or deleted from an entity then no longer makes that entity dirty)"
            )
        elif not full and identity == "f":
            log.warning(
                "%s has REPLICA IDENTITY FULL but no trigger on it sets replica_identity: full; "
                "before images are ignored, so a row moved away from an entity does not make it "
                "dirty",
                table,
            )
    if problems:
        raise ConfigurationError("; ".join(problems), scope="source.database")


def _tables_wanting_full(definition: SyncDefinition) -> dict[str, bool]:
    """Per table: does any trigger on it read before images?"""
    wants: dict[str, bool] = {}
    for resource in definition.resources.values():
        for trigger in resource.triggers:
            wants[trigger.table] = wants.get(trigger.table, False) or (
                trigger.replica_identity == "full"
            )
    return wants


def _replica_identities(definition: SyncDefinition, tables: list[str]) -> Mapping[str, str]:
    """``pg_class.relreplident`` of each table that exists."""
    dsn = definition.source.database.dsn.get_secret_value()
    found: dict[str, str] = {}
    try:
        with psycopg.connect(dsn, connect_timeout=DATABASE_CONNECT_TIMEOUT_S) as conn:
            for table in tables:
                schema, name = table.split(".", 1)
                row = conn.execute(_IDENTITY_SQL, (schema, name)).fetchone()
                if row is not None:
                    found[table] = str(row[0])
    except psycopg.OperationalError as exc:
        raise Retryable(
            f"source database unavailable for the replica identity check: {exc}"
        ) from exc
    return found


def ensure_topics(definition: SyncDefinition) -> None:
    """Create the dirty and dead-letter topics if missing, and the scheduled topic when a resource
    is scheduled (as many partitions as the dirty topic); an existing topic is kept as it is."""
    kafka, topics = definition.source.kafka, definition.topics
    admin = AdminClient({**kafka.client_settings, "bootstrap.servers": kafka.bootstrap_servers})
    wanted = {
        topics.dirty: topics.dirty_partitions,
        topics.dead_letter: DEAD_LETTER_PARTITIONS,
    }
    if definition.scheduled_resources():
        wanted[topics.scheduled] = topics.dirty_partitions
    futures = admin.create_topics(
        [NewTopic(name, count, BROKER_DEFAULT_REPLICATION) for name, count in wanted.items()],
        request_timeout=ADMIN_TIMEOUT_S,
    )
    for name, future in futures.items():
        _created_or_exists(name, future)
    _warn_on_partition_count(admin, topics.dirty, topics.dirty_partitions)
    if topics.scheduled in wanted:
        _warn_on_partition_count(admin, topics.scheduled, topics.dirty_partitions)


def _created_or_exists(name: str, future: concurrent.futures.Future[None]) -> None:
    try:
        future.result(timeout=ADMIN_TIMEOUT_S)
    except concurrent.futures.TimeoutError as exc:
        raise Retryable(f"creating topic {name}: no answer from the broker") from exc
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return
        if error.code() in (
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.CLUSTER_AUTHORIZATION_FAILED,
            KafkaError.POLICY_VIOLATION,
            KafkaError.INVALID_REPLICATION_FACTOR,
        ):
            raise ConfigurationError(f"cannot create topic {name}: {error.str()}") from exc
        raise Retryable(f"creating topic {name}: {error.str()}") from exc
    else:
        log.info("created topic %s", name)


def _warn_on_partition_count(admin: AdminClient, topic: str, configured: int) -> None:
    """Entities are placed by key hash modulo the partition count; say when it differs."""
    metadata = admin.list_topics(topic=topic, timeout=ADMIN_TIMEOUT_S)
    found = metadata.topics.get(topic)
    if found is not None and found.error is None and len(found.partitions) != configured:
        log.warning(
            "topic %s has %d partitions, the definition says %d; the existing count is used",
            topic,
            len(found.partitions),
            configured,
        )
