"""Database access on the whole stack: once the pipeline converged, each view holds for its
tenant exactly what the sandbox (Reach) holds, entity for entity."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql
from reach_devstack.stack import DEV_TENANTS, StackEndpoints

from consumer.cli.access import add_access_commands
from tests.e2e.conftest import EXAMPLE, RunningPipeline, shop_env
from tests.e2e.helpers import Sandbox, converged


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="reach-sync")
    add_access_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def _as_reach_holds(row: dict[str, Any]) -> dict[str, Any]:
    """A view row as Reach stores the record: a null field is no field (an upsert deletes it),
    a decimal is a JSON number."""
    return {k: float(v) if isinstance(v, Decimal) else v for k, v in row.items() if v is not None}


def test_each_view_holds_what_reach_holds_for_its_tenant(
    shop_stack: StackEndpoints,
    pipeline: Callable[..., AbstractContextManager[RunningPipeline]],
    unique: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, schema, role = unique("e2e"), unique("access"), unique("reader")
    for var, value in {**shop_env(shop_stack, name), "READER_PASSWORD": "pw-e2e"}.items():
        monkeypatch.setenv(var, value)
    common = ("--config", str(EXAMPLE), "--schema", schema, "--role", role)
    with pipeline(name) as running:
        differences = converged(running.definition, shop_stack)
        assert all(d.equal for d in differences), differences
        assert _run("db-access", "apply", *common, "--password-env", "READER_PASSWORD") == 0
    sandbox = Sandbox.of(shop_stack)
    dsn = psycopg.conninfo.conninfo_to_dict(shop_stack.postgres_dsn)
    login = {**dsn, "user": role, "password": "pw-e2e"}
    try:
        with psycopg.connect(**login) as conn:
            for resource_name, resource in running.definition.resources.items():
                key_field = next(f for f, m in resource.mapping.items() if m.column == resource.key)
                for reach_tenant, tenant in DEV_TENANTS:
                    view = f"{resource_name}__{tenant.replace('-', '_')}"
                    cursor = conn.execute(
                        sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, view))
                    )
                    columns = [c.name for c in cursor.description or ()]
                    rows = [dict(zip(columns, r, strict=True)) for r in cursor.fetchall()]
                    assert rows, f"{view} is empty"
                    assert len(rows) == sandbox.stored(reach_tenant, resource.reach_schema)
                    for row in rows:
                        held = sandbox.current(tenant, resource.reach_schema, row[key_field])
                        assert held == _as_reach_holds(row), f"{view} {row[key_field]}"
    finally:
        assert _run("db-access", "drop", *common) == 0
