"""The sandbox as a process: bad configs, SIGTERM, and state that survives a restart."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from reach_sandbox.config import BatchConfig, write_sandbox_config
from reach_sandbox.testing import running_sandbox, sandbox_config


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reach_sandbox", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_bad_config_exits_with_one_line_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "sandbox.yaml"
    config.write_text("admin_token: x\npartners:\n  - partner_id: p\n    secret: s\n    extra: 1\n")
    result = _run_cli("--config", str(config), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(config) in lines[0] and "partners.0.extra" in lines[0]
    assert "Extra inputs are not permitted" in lines[0]


def test_an_unenforceable_schema_in_the_config_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "sandbox.yaml"
    write_sandbox_config(sandbox_config(), config)
    text = config.read_text().replace(
        "schemas: []",
        "schemas:\n- name: contacts\n  external_id_field: contactId\n  schema:\n"
        "    properties:\n      contactId: {type: string, if: {}}\n",
    )
    config.write_text(text)
    result = _run_cli("--config", str(config), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2
    assert "schemas.contacts" in result.stderr and "'if' is not supported" in result.stderr


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    with running_sandbox(tmp_path) as server:
        with server.client("merchant-1") as api:
            assert api.get("/api/resources/customers").status_code == 200
        server.process.signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
    assert not (tmp_path / "port").exists()


def test_a_restart_keeps_resources_and_applies_batches_accepted_before_it(tmp_path: Path) -> None:
    state = tmp_path / "shared"
    slow = sandbox_config(batches=BatchConfig(processing_delay_seconds=30))
    with running_sandbox(state, slow) as first, first.client("merchant-1") as api:
        api.post("/api/resources/customers", json={"data": {"customerId": "kept"}})
        accepted = api.post(
            "/api/resources/customers/batch", json={"resources": [{"customerId": "queued"}]}
        )
        batch_id = accepted.json()["data"]["batchId"]
        status = api.get(f"/api/batches/{batch_id}").json()["data"]["status"]
    assert status == "processing"
    with running_sandbox(state) as second:
        batch = second.wait_batch("merchant-1", batch_id)
        with second.client("merchant-1") as api:
            kept = api.get("/api/resources/customers/kept")
            queued = api.get("/api/resources/customers/queued")
    assert batch["status"] == "success"
    assert kept.status_code == 200
    assert queued.status_code == 200
    assert not (state / "data" / "batches" / f"{batch_id}.json").exists()
