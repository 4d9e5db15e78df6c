"""The alerts shipped with the Kubernetes manifests (deploy/kubernetes/overlays/example/
prometheusrule.yaml), read for the tests that keep them true to what reach-sync exports: the
unit test against the code's instrument names, the metrics e2e test against a real scrape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

RULE = (
    Path(__file__).resolve().parents[1]
    / "deploy"
    / "kubernetes"
    / "overlays"
    / "example"
    / "prometheusrule.yaml"
)


def alert_rules(rule: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every rule of a PrometheusRule object (by default the shipped one)."""
    if rule is None:
        rule = yaml.safe_load(RULE.read_text())
    assert rule is not None and rule["kind"] == "PrometheusRule"
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def selectors(node: Any) -> Iterator[tuple[str, set[str]]]:
    """Every vector selector of an expression parsed by promql_parser: its metric name, and the
    labels it matches or is grouped by on the way down."""
    name = type(node).__name__
    if name == "VectorSelector":
        yield node.name, {m.name for m in node.matchers.matchers}
        return
    grouping = set(node.modifier.labels) if name == "AggregateExpr" and node.modifier else set()
    for attribute in ("lhs", "rhs", "expr", "args", "vector_selector"):
        child = getattr(node, attribute, None)
        for item in child if isinstance(child, list) else [child]:
            if item is not None and type(item).__module__.startswith("promql"):
                for metric, labels in selectors(item):
                    yield metric, labels | grouping
