"""Helpers of the delivery-under-pressure tests (issue 4): a definition with other destination
settings, reach-sync on it in a thread, the sandbox's rate limits and fault counters, the
dead-letter topic read back, and requests per second from the sandbox's request log.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from reach_devstack.stack import StackEndpoints

from consumer.config import SyncDefinition
from consumer.records.dlq_read import Filter, read_dead_letters
from tests.e2e.conftest import EXAMPLE
from tests.e2e.helpers import LivePipeline, Sandbox, pipeline_thread


def definition_file(directory: Path, name: str, destination: Mapping[str, Any]) -> Path:
    """examples/shop.yaml with ``destination`` keys replaced (e.g. ``rate_limit``, ``timeout_s``),
    written to ``directory``; its ``${VAR}``s are still read from the environment."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["destination"].update(destination)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def pipeline_from(
    endpoints: StackEndpoints, name: str, config: Path
) -> AbstractContextManager[LivePipeline]:
    """``helpers.pipeline_thread`` on the definition file ``config`` (isolated by ``name``)."""
    return pipeline_thread(endpoints, name, config=config)


def dead_letter_count(definition: SyncDefinition) -> int:
    """Records Reach refused, on the definition's dead-letter topic (each test has its own).

    Event dead letters do not count: the pipeline reads the shared shop topics from the start,
    where other tests (test_bad_events) put malformed events on purpose.
    """
    return len(read_dead_letters(definition, Filter(kind="record")).entries)


class SandboxSwitches:
    """The sandbox's rate limits, its fault board and its batch order, through the admin API."""

    def __init__(self, endpoints: StackEndpoints) -> None:
        self._url = endpoints.sandbox_url
        self._headers = {"authorization": f"Bearer {endpoints.sandbox_admin_token}"}
        self._sandbox = Sandbox.of(endpoints)

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self._url, headers=self._headers, timeout=30)

    def rate_limits(self) -> dict[str, Any]:
        with self._client() as http:
            found: dict[str, Any] = http.get("/_admin/rate-limits").raise_for_status().json()
            return found

    def set_rate_limits(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        with self._client() as http:
            answer = http.put("/_admin/rate-limits", json=dict(settings)).raise_for_status()
            found: dict[str, Any] = answer.json()
            return found

    @contextmanager
    def limited(self, settings: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Rate limits in force inside the block; the previous ones are restored, however."""
        previous = self.rate_limits()
        try:
            yield self.set_rate_limits(settings)
        finally:
            self.set_rate_limits(previous)

    def faults(self) -> list[dict[str, Any]]:
        """The active faults, each with how often it ``fired``."""
        with self._client() as http:
            found: list[dict[str, Any]] = (
                http.get("/_admin/faults").raise_for_status().json()["faults"]
            )
            return found

    def batch_order(self) -> dict[str, Any]:
        return self._sandbox.batch_order()

    def shuffled(self, seed: int, gather_seconds: float) -> AbstractContextManager[dict[str, Any]]:
        """``Sandbox.shuffled_batches``: batches in a seeded random order inside the block."""
        return self._sandbox.shuffled_batches(seed, gather_seconds)


def most_in_any_window(times: Sequence[float], window_s: float = 1.0) -> int:
    """The largest number of ``times`` inside any half-open interval [t, t + window_s)."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


def by_tenant(requests: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Request-log rows per tenant (the Reach tenant id); rows without a tenant are left out."""
    found: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in requests:
        if row["tenantId"] is not None:
            found[row["tenantId"]].append(row)
    return dict(found)


def requests_since(sandbox: Sandbox, after_seq: int) -> list[dict[str, Any]]:
    """Every request-log row after ``after_seq``, oldest first (the log pages by 10,000)."""
    found: list[dict[str, Any]] = []
    while page := sandbox.requests(after_seq):
        found += page
        after_seq = page[-1]["seq"]
    return found
