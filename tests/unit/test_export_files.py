"""The CSV files of an export (consumer/export/csv_files.py): one per tenant however many tenants
share the open-file bound, nothing under a final name before commit, nothing left by discard, a
tenant that cannot leave its folder, and the documented cell encoding."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import uuid
from pathlib import Path

import orjson
import pytest

from consumer.export.csv_files import ExportError, TenantFiles, cell, file_name

COLUMNS = ["id", "name"]


def _read(path: Path, gzipped: bool) -> list[list[str]]:
    data = path.read_bytes()
    text = (gzip.decompress(data) if gzipped else data).decode()
    return list(csv.reader(io.StringIO(text, newline="")))


@pytest.mark.parametrize("gzipped", [False, True], ids=["csv", "gzip"])
def test_more_tenants_than_open_files_each_get_their_rows_in_order(
    tmp_path: Path, gzipped: bool
) -> None:
    files = TenantFiles(tmp_path, COLUMNS, gzipped=gzipped, max_open=2)
    tenants = [f"t{n}" for n in range(5)]
    for row in range(40):  # interleaved: every write reopens a file closed to make room
        files.write(tenants[row % 5], [str(row), f"name, {row}"])
    committed = files.commit()

    assert [f.tenant for f in committed] == tenants
    for number, found in enumerate(committed):
        assert _read(found.path, gzipped) == [
            COLUMNS,
            *([str(r), f"name, {r}"] for r in range(number, 40, 5)),
        ]
        data = found.path.read_bytes()
        assert (found.rows, found.bytes) == (8, len(data))
        assert found.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{t}.csv.gz" if gzipped else f"{t}.csv" for t in tenants
    ]


def test_nothing_has_its_final_name_before_commit(tmp_path: Path) -> None:
    files = TenantFiles(tmp_path, COLUMNS)
    files.write("acme", ["1", "a"])
    assert [p.name for p in tmp_path.iterdir()] == ["acme.csv.partial"]
    files.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["acme.csv"]


@pytest.mark.parametrize("committed", [False, True], ids=["written", "committed"])
def test_discard_leaves_nothing_of_the_files(tmp_path: Path, committed: bool) -> None:
    files = TenantFiles(tmp_path, COLUMNS, max_open=1)
    for tenant in ("acme", "globex", "acme"):
        files.write(tenant, ["1", "a"])
    if committed:
        files.commit()
    files.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_cannot_be_written_is_an_export_error_naming_it(tmp_path: Path) -> None:
    files = TenantFiles(tmp_path / "missing", COLUMNS)
    with pytest.raises(ExportError) as caught:
        files.write("acme", ["1", "a"])
    assert str(tmp_path / "missing" / "acme.csv.partial") in str(caught.value)


@pytest.mark.parametrize(
    ("tenant", "name"),
    [
        ("merchant-7", "merchant-7.csv"),
        ("a/b", "a%2Fb.csv"),
        ("..", "%2E..csv"),
        ("../etc", "%2E.%2Fetc.csv"),
        (".hidden", "%2Ehidden.csv"),
        ("ünï code", "%C3%BCn%C3%AF%20code.csv"),
        ("", "%00.csv"),
    ],
)
def test_a_tenant_becomes_a_file_name_inside_its_folder(tenant: str, name: str) -> None:
    assert file_name(tenant, ".csv") == name
    assert "/" not in name and not name.startswith(".")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("", ""),
        ('a, "b"\nc', 'a, "b"\nc'),
        (True, "true"),
        (False, "false"),
        (42, "42"),
        (1.5, "1.5"),
        (100.0, "100.0"),
        ([1, "a", None], '[1,"a",null]'),
        ({"k": "ö", "n": [True]}, '{"k":"ö","n":[true]}'),
        ([], "[]"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        # an exact number of projection.py (decimal, raw): its digits
        (orjson.Fragment(b"3.14159265358979323846"), "3.14159265358979323846"),
    ],
)
def test_a_value_becomes_its_documented_cell(value: object, text: str) -> None:
    assert cell(value) == text
