"""The definition checked against a real Reach sandbox's schema definitions
(consumer/reach_check.py): the sample shop fits the local stack's shop schemas; each mistake that
only Reach would show is named by ``validate --reach`` at its file, line and path, and ``run``
refuses to start on it (checked against a real source database first, which the shop passes).

One sandbox (with the shop's schemas, as the local stack configures it) for the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from reach_devstack.postgres import PostgresConfig
from reach_devstack.shop import apply_schema
from reach_devstack.stack import with_shop_schemas
from reach_sandbox.testing import (
    PARTNER_ID,
    PARTNER_SECRET,
    STATIC_KEY,
    SandboxServer,
    running_sandbox,
    sandbox_config,
)

from consumer.cli.main import main
from tests.shop_definition import EXAMPLE, OFFLINE_ENV

SHOP = EXAMPLE.read_text()

# Each mistake: (what to replace in the shop's definition, with what, the path it must be named
# at, words of the reason, and the text whose line it is named at when not the edited one).
MISTAKES = [
    (
        "      email: {column: email, pii: send}",
        "      emial: {column: email, pii: send}",
        "resources.customers.mapping.emial",
        "has no property emial (did you mean email?) and allows no other",
    ),
    (
        "      transactionTotal: {column: amount_cents, format: decimal_cents}\n",
        "",
        "resources.transactions.mapping",
        "Reach schema shop_transactions requires transactionTotal, which is not mapped",
        "    mapping:\n      transactionId",
    ),
    (
        "completedOrders: {column: completed_orders, format: integer}",
        "completedOrders: {column: completed_orders, format: decimal_cents}",
        "resources.customers.mapping.completedOrders.format",
        "format decimal_cents sends a number (cents / 100); "
        'shop_customers.completedOrders is {"type": "integer"}',
    ),
    (
        "createdAt: {column: created_at, format: datetime}",
        "createdAt: {column: created_at, format: date}",
        "resources.customers.mapping.createdAt.format",
        'shop_customers.createdAt is {"type": "string", "format": "date-time"}',
    ),
    (
        "reach_schema: shop_transactions",
        "reach_schema: shop_sales",
        "resources.transactions.reach_schema",
        "Reach has no schema shop_sales (it has customers, locations, shop_customers, "
        "shop_transactions, transactions)",
    ),
    (
        "field: segments",
        "field: segmentz",
        "resources.customers.groups.field",
        "has no property segmentz (did you mean segments?)",
    ),
]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    config = with_shop_schemas(sandbox_config())
    with running_sandbox(tmp_path_factory.mktemp("sandbox"), config) as server:
        yield server


@pytest.fixture
def shop_database(database: PostgresConfig) -> PostgresConfig:
    """A source database with the shop's tables, so the definition passes ``--source``."""
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        apply_schema(conn)
    return database


@pytest.fixture(autouse=True)
def _env(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REACH_SYNC_REACH_URL", sandbox.base_url)
    monkeypatch.setenv("REACH_SYNC_PARTNER_ID", PARTNER_ID)
    monkeypatch.setenv("REACH_SYNC_JWT_SECRET", PARTNER_SECRET)


def _line_of(text: str, fragment: str) -> int:
    return text[: text.index(fragment)].count("\n") + 1


def _written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shop.yaml"
    path.write_text(text)
    return path


def test_the_shop_definition_passes_against_the_shops_reach_schemas(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", str(EXAMPLE), "--reach"]) == 0
    assert f"{EXAMPLE}: valid (and against Reach's schemas). " in capsys.readouterr().out


def test_the_shop_passes_both_checks_at_once(
    shop_database: PostgresConfig,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REACH_SYNC_DATABASE_URL", shop_database.dsn)
    assert main(["validate", str(EXAMPLE), "--source", "--reach"]) == 0
    assert "valid (and against the source database and Reach's schemas)" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m[2] for m in MISTAKES])
def test_each_mistake_is_named_with_its_line_and_path_and_run_refuses_to_start(
    tmp_path: Path,
    shop_database: PostgresConfig,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mistake: tuple[str, ...],
) -> None:
    old, new, where, reason = mistake[:4]
    anchor = mistake[4] if len(mistake) > 4 else new
    assert old in SHOP
    text = SHOP.replace(old, new, 1)
    path = _written(tmp_path, text)

    assert main(["validate", str(path), "--reach"]) == 2
    lines = capsys.readouterr().err.splitlines()
    named = [line for line in lines if f": {where}: " in line]
    assert len(named) == 1, lines
    assert reason in named[0], named
    assert named[0].startswith(f"{path}:{_line_of(text, anchor)}: "), named

    # run refuses before it starts anything (the broker here does not even exist), the
    # definition having passed the source check against a real database.
    monkeypatch.setenv("REACH_SYNC_DATABASE_URL", shop_database.dsn)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if f": {where}: " in line] == named


def test_every_problem_is_named_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = SHOP
    for old, new, *_ in MISTAKES:
        text = text.replace(old, new, 1)
    path = _written(tmp_path, text)
    assert main(["validate", str(path), "--reach"]) == 2
    err = capsys.readouterr().err
    # The unknown schema hides the transactions' own fields; the rest are all there.
    for _, _, where, *_ in MISTAKES[:1] + MISTAKES[2:]:
        assert f": {where}: " in err, err


def test_a_static_key_reach_accepts_reads_the_schemas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jwt_auth = "    mode: jwt\n    partner_id: ${REACH_SYNC_PARTNER_ID}\n"
    assert jwt_auth in SHOP
    path = _written(tmp_path, SHOP.replace(jwt_auth, "    mode: static\n", 1))
    monkeypatch.setenv("REACH_SYNC_JWT_SECRET", STATIC_KEY)
    assert main(["validate", str(path), "--reach"]) == 0
    assert "valid (and against Reach's schemas)" in capsys.readouterr().out

    monkeypatch.setenv("REACH_SYNC_JWT_SECRET", "rk_not_a_key_reach_issued_0123")
    assert main(["validate", str(path), "--reach"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("validate: Reach GET /partner/schema-definitions answered 401"), err
    assert "destination.auth.mode is static" in err
    assert "rk_not_a_key" not in err


def test_a_reach_that_fails_is_told_and_exits_1(
    sandbox: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.add_fault(kind="error", status=503, path_prefix="/partner/schema-definitions")
    try:
        assert main(["validate", str(EXAMPLE), "--reach"]) == 1
    finally:
        sandbox.clear_faults()
    err = capsys.readouterr().err
    assert err.startswith("validate: Reach unavailable for the definition check: Reach GET "), err
    assert "503" in err
