"""The CSV export against what the API path delivered: after a sync has converged, every row of
``reach-sync export`` (customers and transactions, every tenant), read back, is the record the
sandbox holds for that entity, and each tenant's file has as many rows as the sandbox has
resources. So the one-time CSV load and the ongoing sync agree."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
from reach_devstack.stack import StackEndpoints

from consumer.config import Resource
from consumer.export.csv_export import export_csv
from tests.e2e.conftest import TENANTS, RunningPipeline
from tests.e2e.helpers import Sandbox, converged

DECODE: dict[str, Callable[[str], Any]] = {
    "integer": int,
    "decimal_cents": float,
    "boolean": {"true": True, "false": False}.__getitem__,
}


def _record(resource: Resource, header: list[str], row: list[str]) -> dict[str, Any]:
    """A CSV row as Reach stores the record: an empty cell (null) is no field at all (Reach
    deletes a field sent as null), the groups field is JSON, typed fields by their format; the
    shop's raw fields are all text."""
    record: dict[str, Any] = {}
    for name, value in zip(header, row, strict=True):
        if value == "":
            continue
        if resource.groups is not None and name == resource.groups.field:
            record[name] = json.loads(value)
        else:
            record[name] = DECODE.get(resource.mapping[name].format, str)(value)
    return record


def _key_field(resource: Resource) -> str:
    """The mapped field holding the entity's own id (its external id in Reach)."""
    return next(n for n, m in resource.mapping.items() if m.column == resource.key)


def _stored(sandbox: Sandbox, tenant: str, schema: str) -> int:
    headers = {"authorization": f"Bearer {sandbox.admin_token}"}
    with httpx.Client(base_url=sandbox.url, headers=headers, timeout=30) as http:
        params = {"tenant": tenant, "schema": schema, "limit": 1}
        total: int = http.get("/_admin/resources", params=params).raise_for_status().json()["total"]
    return total


def test_every_exported_row_is_the_record_the_sandbox_holds_after_a_sync(
    shop_stack: StackEndpoints,
    pipeline: Callable[..., AbstractContextManager[RunningPipeline]],
    tmp_path: Path,
) -> None:
    with pipeline() as running:
        differences = converged(running.definition, shop_stack)
        assert all(d.equal for d in differences), differences
    definition = running.definition
    report = asyncio.run(
        export_csv(definition, tmp_path / "out", resources=["customers", "transactions"])
    )

    sandbox = Sandbox.of(shop_stack)
    compared, empty_cells, grouped = 0, 0, 0
    for done in report.resources:
        resource = definition.resources[done.resource]
        assert done.rejected == 0
        rows_of = {tenant: 0 for tenant in TENANTS}
        for file in done.files:
            header, *rows = csv.reader(io.StringIO(file.path.read_bytes().decode(), newline=""))
            rows_of[file.tenant] = len(rows)
            for row in rows:
                record = _record(resource, header, row)
                external_id = record[_key_field(resource)]
                held = sandbox.current(file.tenant, resource.reach_schema, external_id)
                assert record == held, (done.resource, file.tenant, external_id)
                compared += 1
                empty_cells += row.count("")
                grouped += bool(resource.groups and record[resource.groups.field])
        for tenant, count in rows_of.items():
            assert count == _stored(sandbox, tenant, resource.reach_schema), (tenant, count)
    # The seeded shop (60 customers, 150 transactions at least) was compared, field by field,
    # nulls (no phone) and group memberships among them.
    assert compared >= 210 and empty_cells > 0 and grouped > 0
    assert {d.resource: d.rows for d in report.resources} == {
        d.resource: d.checked for d in differences
    }
