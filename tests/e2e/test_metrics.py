"""Metrics on the whole pipeline: after a load run, what ``/metrics`` says agrees with the
sandbox's own counts.

reach-sync runs with a health port, so Prometheus' text is scraped from ``/metrics`` over HTTP
as a Prometheus server would. Two checks, each against what the sandbox itself recorded:

- **accepted**: every record reach-sync counts as accepted is one upsert version in the
  sandbox's history (the pipeline reads the shop topics from the start and sends each entity's
  state, then the workload's changes; nothing else writes to the sandbox meanwhile, and the
  shop's schemas have no ``$ref``, so nothing is parked);
- **skipped**: a no-op UPDATE of every customer of one merchant recomputes each, and each is
  skipped as unchanged: as many skips as the sandbox holds customers of that tenant, while the
  sandbox's history gains nothing and no record counts as accepted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from reach_devstack.load import run_load
from reach_devstack.stack import StackEndpoints

from tests.alerts import alert_rules, selectors
from tests.e2e.conftest import EXAMPLE
from tests.e2e.helpers import Sandbox, assert_converged, sql, wait_for, wait_quiet
from tests.e2e.pressure import pipeline_from

LOAD_RATE = 20.0  # operations per second
LOAD_SECONDS = 10.0
CONVERGE_S = 180.0
SKIPS_S = 60.0
TENANT = "merchant-1"
CUSTOMERS = "shop_customers"

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _definition(directory: Path, name: str) -> Path:
    """examples/shop.yaml with a health port (any free one): /metrics is served there."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data["health"] = {"port": 0}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _scrape(port: int) -> Samples:
    """Every sample of /metrics, by sample name: its labels and value."""
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    answer.raise_for_status()
    found: Samples = defaultdict(list)
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[sample.name].append((sample.labels, sample.value))
    return found


def _total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(k) == v for k, v in labels.items())
    )


def _records(samples: Samples, outcome: str) -> int:
    return int(_total(samples, "reach_sync_records_sent_total", reach_sync_outcome=outcome))


def _versions_since(sandbox: Sandbox, after_seq: int) -> dict[str, int]:
    """The sandbox's history after ``after_seq``: how many versions of each op (every tenant)."""
    ops: dict[str, int] = defaultdict(int)
    with httpx.Client(
        base_url=sandbox.url, headers={"authorization": f"Bearer {sandbox.admin_token}"}
    ) as http:
        while True:
            params: dict[str, Any] = {"afterSeq": after_seq, "limit": 10000}
            page = http.get("/_admin/history", params=params).raise_for_status().json()
            if not page["versions"]:
                return dict(ops)
            for version in page["versions"]:
                ops[version["op"]] += 1
            after_seq = page["versions"][-1]["seq"]


def _customers_in_sandbox(sandbox: Sandbox, tenant: str) -> int:
    with httpx.Client(
        base_url=sandbox.url, headers={"authorization": f"Bearer {sandbox.admin_token}"}
    ) as http:
        params = {"tenant": tenant, "schema": CUSTOMERS, "limit": 1}
        total: int = http.get("/_admin/resources", params=params).raise_for_status().json()["total"]
        return total


@pytest.mark.timeout(600)
def test_metrics_agree_with_the_sandboxs_counts_after_a_load_run(
    shop_stack: StackEndpoints, unique: Callable[[str], str], tmp_path: Path
) -> None:
    sandbox = Sandbox.of(shop_stack)
    name = unique("metrics")
    config = _definition(tmp_path, name)
    first_seq = sandbox.last_version_seq()

    with pipeline_from(shop_stack, name, config) as running:
        port = wait_for(lambda: running.stats.health_port, 60, "the health port")
        load = run_load(
            shop_stack.postgres_dsn,
            rate=LOAD_RATE,
            seconds=LOAD_SECONDS,
            rng_seed=11,
            progress=False,
        )
        assert_converged(running.definition, shop_stack, CONVERGE_S)
        wait_quiet(running.counters, quiet_s=2.0, timeout_s=60)
        running.check_alive()
        loaded = _scrape(port)
        versions = _versions_since(sandbox, first_seq)
        report = f"load {load}; sandbox versions {versions}; syncer {running.counters()}"

        # Sent: one sandbox version per record counted accepted, and nothing counted twice.
        accepted = _records(loaded, "accepted")
        upserts = sum(n for op, n in versions.items() if op != "delete")
        assert accepted > 0, report
        assert accepted == upserts, report
        assert _records(loaded, "parked") == 0, report

        # Skipped: a no-op UPDATE of every customer of one merchant, each already in Reach.
        expected = _customers_in_sandbox(sandbox, TENANT)
        assert expected > 0
        skipped_before = _records(loaded, "skipped")
        seq_before = sandbox.last_version_seq()
        sql(
            shop_stack.postgres_dsn,
            (
                "UPDATE customers SET email = email"
                " WHERE merchant_id = (SELECT id FROM merchants WHERE external_id = %s)",
                (TENANT,),
            ),
        )
        wait_for(
            lambda: _records(_scrape(port), "skipped") - skipped_before >= expected,
            SKIPS_S,
            f"{expected} skips",
            guard=running.check_alive,
        )
        wait_quiet(running.counters, quiet_s=2.0, timeout_s=60)
        after = _scrape(port)
        report += f"; accepted {accepted}; {expected} skips expected"
        report += f"; after the no-op update {running.counters()}"
        print(report)

        assert _records(after, "skipped") - skipped_before == expected, report
        assert _records(after, "accepted") == accepted, report
        assert sandbox.last_version_seq() == seq_before, report

        # The rest is there and sensible: the router read events, the syncer made windows of
        # them, the latency histogram counted entities, Reach answered, nothing lags now.
        assert _total(after, "reach_sync_events_consumed_total") >= load.commits > 0, report
        assert _total(after, "reach_sync_dirty_keys_consumed_total") > 0, report
        assert _total(after, "reach_sync_window_size_count") > 0, report
        assert _total(after, "reach_sync_commit_to_accept_duration_seconds_count") > 0, report
        assert _total(after, "reach_sync_recompute_rows_total") > 0, report
        assert _total(after, "reach_sync_reach_requests_total", http_response_status_code="200")
        assert (
            _total(after, "reach_sync_records_sent_total", reach_sync_outcome="dead_lettered") == 0
        )
        # The alerts shipped with the Kubernetes manifests read series that a real scrape has.
        alerted = {
            metric
            for alert in alert_rules()
            for metric, _ in selectors(promql_parser.parse(alert["expr"]))
            if metric.startswith("reach_sync_")
        }
        missing = sorted(alerted - set(after))
        assert alerted and missing == [], f"the alerts read series /metrics lacks: {missing}"
        wait_for(
            lambda: (
                (lag := _scrape(port).get("reach_sync_consumer_lag"))
                and sum(v for _, v in lag) == 0
            ),
            30,
            "no lag",
        )
