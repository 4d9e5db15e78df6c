"""A consumed Kafka message as confluent-kafka hands it over: what the stages read of one, for
the unit tests that drive a stage's loop with stand-ins of its consumer."""

from __future__ import annotations


class StubMessage:
    """No error, no headers, a producer's timestamp. A plain class (not a dataclass), so that a
    test can hold a weak reference to one."""

    def __init__(self, topic: str, partition: int, offset: int, key: bytes, value: bytes) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value = key, value

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)  # TIMESTAMP_CREATE_TIME
