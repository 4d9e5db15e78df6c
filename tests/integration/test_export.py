"""``reach-sync export`` and ``sample`` on a real Postgres (consumer/export/, cli/export.py):
the CSV holds exactly the records the API path sends (recompute + projection, read back cell by
cell: nested JSON, nulls, quoting, non-ASCII), one file per tenant, in as many pages as it takes;
the manifest agrees with the files; rejected rows are listed by id and reason, never written; a
place that cannot be written, or a disk that fills, leaves nothing behind. ``sample`` prints the
first records as sent, PII masked unless asked."""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from reach_devstack.postgres import PostgresConfig

from consumer.cli.export import add_export_commands
from consumer.config import SyncDefinition
from consumer.config_file import load_definition
from consumer.errors import BadRecord
from consumer.export.csv_export import export_csv
from consumer.sink.projection import project
from consumer.sink.recompute import SourceDatabase

REPO = Path(__file__).parents[2]

DEFINITION = """
version: 1
source:
  kafka: {bootstrap_servers: "127.0.0.1:1", group_id: export, topics: [unused]}
  database: {dsn_env: DATABASE_URL}
resources:
  items:
    reach_schema: shop_items
    key: id
    tenant: tenant
    triggers: [{table: public.items, id: id}]
    query: |
      SELECT i.id, i.tenant, i.label, i.tags, i.attrs, i.active, i.qty, i.price_cents,
             i.seen_at, i.email, i.code
        FROM items i WHERE i.id = ANY(%(ids)s)
    mapping:
      itemId: {column: id, format: string}
      label: {column: label}
      tags: {column: tags}
      attrs: {column: attrs}
      active: {column: active, format: boolean}
      qty: {column: qty, format: integer}
      price: {column: price_cents, format: decimal_cents}
      seenAt: {column: seen_at, format: datetime}
      email: {column: email, pii: send}
      emailHash: {column: email, pii: hash}
      code: {column: code, format: integer}
    groups:
      field: segments
      rules:
        - {name: big, when: qty >= 10}
        - {name: tagged, when: cardinality(tags) > 0}
    delivery: {mode: batch}
    tenants_query: SELECT DISTINCT tenant FROM items UNION SELECT 'hooli'
  notes:
    reach_schema: shop_notes
    key: id
    tenant: tenant
    triggers: [{table: public.items, id: id}]
    query: "SELECT i.id, i.tenant, i.label FROM items i WHERE i.id = ANY(%(ids)s)"
    mapping: {noteId: {column: id, format: string}, text: {column: label}}
    delivery: {mode: batch}
destination:
  base_url: "http://127.0.0.1:1"
  auth: {mode: jwt, partner_id: p, secret_env: JWT_SECRET}
redis: {url_env: REDIS_URL, key_prefix: export}
topics: {dirty: t.dirty, dirty_partitions: 1, dead_letter: t.dead-letter, audit: t.audit}
"""

COLUMNS = [
    "itemId",
    "label",
    "tags",
    "attrs",
    "active",
    "qty",
    "price",
    "seenAt",
    "email",
    "emailHash",
    "code",
    "segments",
]
# How the test reads each column back (the documented encoding, not the product's code).
JSON_COLUMNS = {"tags", "attrs", "segments"}
KINDS: dict[str, Callable[[str], Any]] = {
    "active": {"true": True, "false": False}.__getitem__,
    "qty": int,
    "price": float,
    "code": int,
    **dict.fromkeys(JSON_COLUMNS, json.loads),
}
TENANTS = ["acme", "globex", "initech/eu"]  # the last one is no plain file name
LABELS = [
    "plain",
    "comma, inside",
    'say "hi", twice ""',
    "two\nlines",
    "crlf\r\nline",
    "ünïcödé ✓ 日本語",
    " padded ",
    None,
]
SECRET_CODE = "SECRET-VALUE-DO-NOT-LEAK"
REJECTED_IDS = {21, 57}  # their code is no integer
ITEM_IDS = [i * 3 for i in range(1, 26)]  # gaps; 25 rows
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _row(item: int) -> tuple[Any, ...]:
    n = item // 3
    tags = [None, [], ["a", "b,c", 'd"e'], ["ö"]][n % 4]
    attrs = None if n % 6 == 0 else {"n": n, "nested": {"list": [1, "two", None]}, "f": 1.5}
    return (
        item,
        TENANTS[n % 3],
        LABELS[n % len(LABELS)],
        tags,
        None if attrs is None else Jsonb(attrs),
        None if n % 5 == 0 else n % 2 == 0,
        n,
        None if n % 7 == 0 else n * 199,
        T0 + timedelta(hours=n),
        None if n % 4 == 0 else f"User{n}@Example.com",
        SECRET_CODE if item in REJECTED_IDS else str(n * 11),
    )


@pytest.fixture
def source(database: PostgresConfig) -> PostgresConfig:
    with psycopg.connect(database.dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, tenant text NOT NULL, label text,"
            " tags text[], attrs jsonb, active boolean, qty int, price_cents bigint,"
            " seen_at timestamptz, email text, code text)"
        )
        for item in sorted(ITEM_IDS, key=lambda i: (i % 4, -i)):  # not in key order
            conn.execute(
                "INSERT INTO items VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                _row(item),
            )
    return database


@pytest.fixture
def env(source: PostgresConfig, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"DATABASE_URL": source.dsn, "JWT_SECRET": "unused", "REDIS_URL": "redis://x:1/0"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def config(tmp_path: Path, env: dict[str, str]) -> Path:
    path = tmp_path / "export.yaml"
    path.write_text(DEFINITION)
    return path


@pytest.fixture
def definition(config: Path, env: dict[str, str]) -> SyncDefinition:
    return load_definition(config, env)


def reach_sync(*argv: str | Path) -> int:
    """The two commands as ``reach-sync`` runs them (consumer/cli/main.py registers them)."""
    parser = argparse.ArgumentParser(prog="reach-sync")
    add_export_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    code: int = args.handler(args)
    return code


def expected(definition: SyncDefinition) -> dict[str, list[dict[str, Any]]]:
    """What the API path sends for each item, by tenant in id order (rejected rows left out)."""
    resource = definition.resources["items"]

    async def recompute() -> dict[str, dict[str, Any]]:
        db = SourceDatabase(definition.source.database)
        await db.open()
        try:
            return (await db.recompute(resource, ITEM_IDS)).rows
        finally:
            await db.close()

    rows = asyncio.run(recompute())
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for item in ITEM_IDS:
        try:
            projected = project(resource, rows[str(item)])
        except BadRecord:
            assert item in REJECTED_IDS
            continue
        by_tenant.setdefault(projected.tenant, []).append(projected.record)
    return by_tenant


def parse(text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The header, and each row as a record: an empty cell is null, typed columns decoded."""
    header, *rows = csv.reader(io.StringIO(text, newline=""))
    return header, [
        {
            name: None if value == "" else KINDS.get(name, str)(value)
            for name, value in zip(header, row, strict=True)
        }
        for row in rows
    ]


def manifest_of(out: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return found


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".partial") or p.suffix in {".csv"}]


# --- the files hold what the API path sends ------------------------------------------------------


def test_each_tenant_gets_one_csv_whose_rows_parse_back_to_the_projected_records(
    tmp_path: Path, config: Path, definition: SyncDefinition, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert reach_sync("export", "--config", config, "--resource", "items", "--out", out) == 0

    files = sorted(p.name for p in (out / "items").iterdir())
    assert files == ["acme.csv", "globex.csv", "initech%2Feu.csv"]
    want = expected(definition)
    assert sorted(want) == sorted(TENANTS)
    for tenant in TENANTS:
        by_name = {f["tenant"]: f["path"] for f in manifest_of(out)["files"]}
        raw = (out / by_name[tenant]).read_bytes()
        assert not raw.startswith(b"\xef\xbb\xbf")  # UTF-8 without a BOM
        header, records = parse(raw.decode("utf-8"))
        assert header == COLUMNS  # the mapping's order, then the groups field
        assert records == want[tenant]
    # The data exercises what it must: quoting, nested JSON, nulls, non-ASCII, groups.
    everything = [r for rs in want.values() for r in rs]
    assert {r["label"] for r in everything} >= set(LABELS)
    assert any(r["attrs"] and r["attrs"]["nested"] for r in everything)
    assert any(r["segments"] == ["big", "tagged"] for r in everything)
    assert any(r["active"] is None for r in everything)
    assert "items (shop_items): 23 rows in 3 files" in capsys.readouterr().out


def test_cells_follow_rfc_4180_with_crlf_rows_and_json_for_nested_values(
    tmp_path: Path, config: Path
) -> None:
    out = tmp_path / "out"
    assert reach_sync("export", "--config", config, "--resource", "items", "--out", out) == 0
    raw = (out / "items" / "globex.csv").read_bytes().decode()
    lines = raw.split("\r\n")
    assert lines[0] == ",".join(COLUMNS)
    assert raw.endswith("\r\n")
    # Item 3 (n = 1): a label with a comma and an object with quotes, both quoted.
    assert lines[1].startswith('3,"comma, inside",[],"{""f"":1.5,""n"":1,""nested"":')
    first = next(csv.reader(io.StringIO(lines[1])))
    assert first[COLUMNS.index("attrs")] == '{"f":1.5,"n":1,"nested":{"list":[1,"two",null]}}'
    assert first[COLUMNS.index("active")] == "false"
    assert first[COLUMNS.index("price")] == "1.99"
    assert first[COLUMNS.index("seenAt")] == "2026-01-02T04:04:05.678Z"
    assert first[COLUMNS.index("segments")] == "[]"
    assert '"say ""hi"", twice """""' in raw  # quotes doubled inside a quoted cell (item 30)
    assert '"two\nlines"' in (out / "items" / "acme.csv").read_bytes().decode()  # item 9


@pytest.mark.parametrize("page_size", [1, 4, 1000])
def test_every_row_is_exported_whatever_the_page_size(
    tmp_path: Path, config: Path, definition: SyncDefinition, page_size: int
) -> None:
    out = tmp_path / "out"
    argv = ["export", "--config", config, "--resource", "items", "--out", out]
    assert reach_sync(*argv, "--page-size", str(page_size)) == 0
    found = {
        f["tenant"]: parse((out / f["path"]).read_bytes().decode())[1]
        for f in manifest_of(out)["files"]
    }
    assert found == expected(definition)


def test_the_manifest_names_every_file_with_its_rows_bytes_and_sha256(
    tmp_path: Path, config: Path
) -> None:
    out = tmp_path / "out"
    before = datetime.now(UTC)
    assert reach_sync("export", "--config", config, "--resource", "items", "--out", out) == 0
    manifest = manifest_of(out)
    assert datetime.fromisoformat(manifest["generated_at"]) >= before.replace(microsecond=0)
    assert {f["tenant"] for f in manifest["files"]} == set(TENANTS)
    for entry in manifest["files"]:
        data = (out / entry["path"]).read_bytes()
        assert entry["resource"] == "items"
        assert entry["reach_schema"] == "shop_items"
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == len(parse(data.decode())[1]) > 0
    (summary,) = manifest["resources"]
    assert summary["columns"] == COLUMNS
    assert summary["rows"] == len(ITEM_IDS) - len(REJECTED_IDS)
    assert summary["rejected"] == len(REJECTED_IDS)
    assert sorted(p.name for p in out.iterdir()) == [
        "items",
        "items.rejected.jsonl",
        "manifest.json",
    ]


def test_gzip_files_hold_the_same_rows_even_when_reopened_to_append(
    tmp_path: Path, definition: SyncDefinition
) -> None:
    # One open file at a time: each tenant's file is closed and reopened at every other row,
    # so each is many gzip members, which a gzip reader reads as one stream.
    report = asyncio.run(
        export_csv(
            definition, tmp_path / "out", resources=["items"], gzipped=True, max_open=1, page_size=5
        )
    )
    (items,) = report.resources
    assert sorted(f.path.name for f in items.files) == [
        "acme.csv.gz",
        "globex.csv.gz",
        "initech%2Feu.csv.gz",
    ]
    want = expected(definition)
    for file in items.files:
        data = file.path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == file.sha256 and len(data) == file.bytes
        header, records = parse(gzip.decompress(data).decode())
        assert header == COLUMNS
        assert records == want[file.tenant]


# --- rejected rows -------------------------------------------------------------------------------


def test_rows_that_cannot_be_projected_are_counted_and_listed_by_id_and_reason_only(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert reach_sync("export", "--config", config, "--resource", "items", "--out", out) == 0
    assert "2 rows rejected, not exported" in capsys.readouterr().out
    lines = [json.loads(x) for x in (out / "items.rejected.jsonl").read_text().splitlines()]
    assert {int(line["id"]) for line in lines} == REJECTED_IDS
    assert all(set(line) == {"id", "reason"} and "'code'" in line["reason"] for line in lines)
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET_CODE not in path.read_bytes().decode()
    written = {
        r["itemId"]
        for f in manifest_of(out)["files"]
        for r in parse((out / f["path"]).read_bytes().decode())[1]
    }
    assert written.isdisjoint(str(i) for i in REJECTED_IDS)


# --- tenants -------------------------------------------------------------------------------------


def test_a_tenant_asked_for_gets_its_rows_only_and_a_known_tenant_without_rows_a_header(
    tmp_path: Path, config: Path, definition: SyncDefinition
) -> None:
    out = tmp_path / "out"
    argv = ["export", "--config", config, "--resource", "items", "--out", out]
    assert reach_sync(*argv, "--tenant", "globex", "--tenant", "hooli") == 0
    files = {f["tenant"]: f for f in manifest_of(out)["files"]}
    assert sorted(files) == ["globex", "hooli"]
    globex = parse((out / files["globex"]["path"]).read_bytes().decode())[1]
    assert globex == expected(definition)["globex"]
    assert (out / files["hooli"]["path"]).read_bytes().decode() == ",".join(COLUMNS) + "\r\n"
    assert files["hooli"]["rows"] == 0


@pytest.mark.parametrize(
    ("resource", "tenant"), [("items", "umbrella"), ("notes", "umbrella")], ids=["listed", "seen"]
)
def test_an_unknown_tenant_exits_2_naming_it_and_writes_nothing(
    tmp_path: Path, config: Path, resource: str, tenant: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # items has a tenants_query to check against; notes has none: no entity has the tenant.
    out = tmp_path / "out"
    argv = ["export", "--config", config, "--resource", resource, "--out", out]
    assert reach_sync(*argv, "--tenant", tenant) == 2
    assert tenant in capsys.readouterr().err
    assert not out.exists()


# --- nothing half-written ------------------------------------------------------------------------


def test_an_out_dir_that_cannot_be_made_is_an_error_naming_it_and_leaves_nothing(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    out = blocker / "out"
    assert reach_sync("export", "--config", config, "--resource", "items", "--out", out) == 1
    assert f"cannot write {out}" in capsys.readouterr().err
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "export.yaml"]


_LIMITED_RUNNER = """
import argparse, resource, sys
from consumer.cli.export import add_export_commands
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # a file grows past it: EFBIG
parser = argparse.ArgumentParser(prog="reach-sync")
add_export_commands(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[2:])
sys.exit(args.handler(args))
"""


@pytest.mark.parametrize("gzipped", [False, True], ids=["csv", "gzip"])
def test_a_disk_that_fills_mid_export_fails_naming_the_file_and_leaves_nothing(
    tmp_path: Path, config: Path, env: dict[str, str], gzipped: bool
) -> None:
    # A file size limit makes the process's writes fail as on a full disk, past 600 bytes.
    out = tmp_path / "out"
    argv = ["export", "--config", str(config), "--resource", "items", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED_RUNNER, "600", *argv, *(["--gzip"] if gzipped else [])],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert f"export: cannot write {out / 'items'}" in done.stderr
    assert "File too large" in done.stderr
    assert not out.exists()


def test_an_export_that_succeeds_under_the_same_limit_when_the_files_fit(
    tmp_path: Path, config: Path, env: dict[str, str]
) -> None:
    # The limit of the test above is what fails it: the same run with room to spare succeeds.
    out = tmp_path / "out"
    argv = ["export", "--config", str(config), "--resource", "items", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED_RUNNER, "1000000", *argv],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (out / "manifest.json").exists()


# --- sample --------------------------------------------------------------------------------------


def _sampled(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_sample_prints_the_first_n_records_as_sent_with_pii_masked(
    config: Path, definition: SyncDefinition, capsys: pytest.CaptureFixture[str]
) -> None:
    assert reach_sync("sample", "--config", config, "--resource", "items", "--count", "4") == 0
    printed = _sampled(capsys)
    first = sorted(
        (r for rs in expected(definition).values() for r in rs), key=lambda r: int(r["itemId"])
    )[:4]
    assert [r["itemId"] for r in printed] == ["3", "6", "9", "12"]
    assert all(list(r) == COLUMNS for r in printed)  # the mapping's order
    for shown, sent in zip(printed, first, strict=True):
        for name in ("email", "emailHash"):
            assert shown[name] == (None if sent[name] is None else "<pii>")
        others = {k: v for k, v in sent.items() if k not in ("email", "emailHash")}
        assert {k: v for k, v in shown.items() if k in others} == others
    assert any(sent["email"] is not None for sent in first)


def test_sample_with_show_pii_prints_the_records_exactly_as_sent(
    config: Path, definition: SyncDefinition, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sample", "--config", config, "--resource", "items", "--count", "3", "--show-pii"]
    assert reach_sync(*argv, "--tenant", "globex") == 0
    assert _sampled(capsys) == expected(definition)["globex"][:3]


def test_sample_of_more_records_than_exist_prints_them_all_and_says_so(
    config: Path, definition: SyncDefinition, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["sample", "--config", config, "--resource", "items", "--count", "100", "--show-pii"]
    assert reach_sync(*argv) == 0
    printed, err = capsys.readouterr()
    records = [json.loads(line) for line in printed.splitlines()]
    assert len(records) == len(ITEM_IDS) - len(REJECTED_IDS)
    assert "2 rows skipped" in err
    assert "has only 23 records" in err
