"""librdkafka settings: reach-sync's own, what a definition's ``client_settings`` may not change,
and the check that makes ``validate`` refuse what ``run`` would refuse.

Offsets are committed only at reach-sync's own checkpoints (after the sink confirmed), so
auto-commit and the automatic offset store are off and cannot be switched on from the sync
definition. The settings reach-sync takes from fields of the definition (bootstrap servers,
group, session timeout) or sets itself (the logger) cannot be given in ``client_settings``
either. Everything else there is passed through to librdkafka (consumer/kafka.py builds the
clients), and librdkafka itself is asked whether it accepts them.

This module imports nothing of the product: the definition's model (consumer/config.py) checks
``client_settings`` with it, and consumer/kafka.py, which reads the definition, builds clients
with the same defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

__all__ = [
    "CONSUMER_DEFAULTS",
    "CORRECTNESS_SETTINGS",
    "PRODUCER_DEFAULTS",
    "RESERVED_SETTINGS",
    "client_settings_problems",
    "rule_problems",
]

# Settings reach-sync's guarantees depend on; a definition that sets them differently is refused.
CORRECTNESS_SETTINGS: dict[str, bool] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
}
# Settings reach-sync sets itself, and what to do instead: a definition that sets them is refused
# (given in client_settings they would silently override the definition's own fields, or move a
# stage out of its consumer group).
_BOOTSTRAP = "set source.kafka.bootstrap_servers instead"
RESERVED_SETTINGS: dict[str, str] = {
    "bootstrap.servers": _BOOTSTRAP,
    "metadata.broker.list": _BOOTSTRAP,  # librdkafka's alias of bootstrap.servers
    "group.id": "set source.kafka.group_id instead (the stages join <group_id>.router and "
    "<group_id>.syncer)",
    "session.timeout.ms": "set source.kafka.session_timeout_ms instead",
    "logger": "reach-sync sends librdkafka's logs through its own logging",
}
CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    # librdkafka waits fetch.queue.backoff.ms (1000 by default) before refilling a full
    # prefetch queue; a consumer that drains its queue quickly then idles (docs/local-stack.md).
    "fetch.queue.backoff.ms": 10,
    # How long a broker may hold a fetch that finds nothing new (librdkafka's default: 500 ms).
    # Kafka answers as soon as data arrives, so on Kafka this only paces an idle consumer's
    # requests; a broker that holds the fetch for the whole wait (the local one) adds it to every
    # hop of a change (docs/benchmarks.md, "Latency"). The local stack sets 10 ms.
    "fetch.wait.max.ms": 100,
    # Prefetch bounds. librdkafka's defaults (64 MiB queued, 100,000 messages, 50 MiB fetches)
    # let each consumer hold 150 MiB of a backlog. A stage takes at most 2,000 messages a batch
    # (the router; the syncer 1,000), so a prefetch of 512 KiB per consumer (~1,000 messages
    # per partition) and 1 MiB fetch responses keep it fed: on a 300,000-event backlog of
    # ~3.5 KB events these lowered `reach-sync run`'s peak RSS from ~270 to ~220 MiB with no
    # loss of events/s (4 MiB, 10,000, 2 MiB and 256 KiB before; bench/pipeline.py, peak RSS).
    # fetch.max.bytes must stay >= message.max.bytes (1,000,000 by default). A definition may
    # raise them all.
    "queued.max.messages.kbytes": 512,
    "queued.min.messages": 1000,
    "fetch.max.bytes": 1024 * 1024,
    "max.partition.fetch.bytes": 128 * 1024,
}
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "compression.type": "lz4",
}

# librdkafka's spellings of a boolean (rdkafka_conf.c), for comparing with CORRECTNESS_SETTINGS.
_TRUE = frozenset({"true", "t", "1"})
_FALSE = frozenset({"false", "f", "0"})
# The consumer group of the probe a definition's settings are checked with; it joins nothing.
_PROBE_GROUP = "reach-sync-validate"


def _as_bool(value: object) -> bool | None:
    """A setting's value as librdkafka reads a boolean; None if it is not one."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def rule_problems(settings: Mapping[str, object]) -> list[str]:
    """Where ``settings`` break reach-sync's own rules (RESERVED_SETTINGS, CORRECTNESS_SETTINGS),
    one reason each."""
    problems = []
    for key, value in settings.items():
        if key in RESERVED_SETTINGS:
            problems.append(f"{key} is set by reach-sync: {RESERVED_SETTINGS[key]}")
        elif key in CORRECTNESS_SETTINGS and _as_bool(value) is not CORRECTNESS_SETTINGS[key]:
            required = str(CORRECTNESS_SETTINGS[key]).lower()
            problems.append(
                f"{key} must stay {required}: reach-sync commits offsets only after the sink "
                "confirmed"
            )
    return problems


def client_settings_problems(settings: Mapping[str, object]) -> list[str]:
    """Why ``run`` would refuse a definition's ``client_settings``, one reason each; [] if not.

    First reach-sync's own rules; then, if they pass, librdkafka's: an unknown property, an
    invalid value, or a combination it cannot build a client with (a SASL mechanism this build
    lacks, an unreadable ``ssl.ca.location``, ...), found by building a consumer and a producer
    with the settings as ``run`` does. These probes have no broker address and connect to
    nothing. One caveat: librdkafka starts some things at creation; with
    ``sasl.oauthbearer.method: oidc`` it may ask the token endpoint for a token, as ``run`` would.
    """
    problems = rule_problems(settings)
    if problems:
        return problems
    refusal = _librdkafka_refusal(settings)
    return [] if refusal is None else [f"librdkafka refuses them: {refusal}"]


def _librdkafka_refusal(settings: Mapping[str, object]) -> str | None:
    # log_level 0: the probes' own warnings (a consumer property given to the producer, no
    # bootstrap servers) are not the definition's problems.
    quiet = {"log_level": 0}
    try:
        Producer({**PRODUCER_DEFAULTS, **settings, **quiet})
        consumer = Consumer(
            {
                **CONSUMER_DEFAULTS,
                "group.id": _PROBE_GROUP,
                **settings,
                **quiet,
                **CORRECTNESS_SETTINGS,
            }
        )
        consumer.close()  # never subscribed: nothing to leave
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        return error.str() if isinstance(error, KafkaError) else str(exc)
    except (TypeError, ValueError) as exc:  # confluent-kafka's own keys (callbacks) given a value
        return str(exc)
    return None
