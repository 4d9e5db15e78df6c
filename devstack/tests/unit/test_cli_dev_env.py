"""``reach-sync dev env``: export lines a POSIX shell reads back as exactly the stack's values,
enough for examples/shop.yaml; without a running stack, an error and nothing to eval."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from reach_devstack.cli import env_lines
from reach_devstack.demo import demo_env
from reach_devstack.stack import StackEndpoints, stack_env
from reach_devstack.supervisor import STATE_FILE

from consumer.cli.main import main
from consumer.config_file import load_definition

EXAMPLE = Path(__file__).parents[3] / "examples" / "shop.yaml"

# Values a shell would mangle unquoted: spaces, quotes, $, backslashes, globs, semicolons.
AWKWARD_SECRET = 'it\'s a $ecret; `echo run` $(echo too) \\ *.yaml "quoted" $HOME'


def _endpoints(**changes: str) -> StackEndpoints:
    fields: dict[str, object] = {
        "state_dir": "/nowhere/stack",
        "logs_dir": "/nowhere/stack/logs",
        "bootstrap_servers": "127.0.0.1:39092",
        "postgres_dsn": "postgresql://reach:p%40ss@127.0.0.1:35432/shop",
        "redis_url": "redis://127.0.0.1:36379/0",
        "sandbox_url": "http://127.0.0.1:38080",
        "sandbox_admin_token": "admin-token",
        "reach_partner_id": "reach-sync-dev",
        "reach_jwt_secret": "jwt-secret-0123456789",
        "reach_static_key": "rk_dev_key",
        "tenants": [{"id": "tenant-1", "external_id": "merchant-1"}],
        "topic_prefix": "shop",
        "debezium_tables": ["public.customers"],
        "debezium_schemas": True,
        "pids": {},
    }
    fields.update(changes)
    return StackEndpoints(**fields)  # type: ignore[arg-type]


def test_the_lines_export_each_variable_quoted_for_the_shell() -> None:
    endpoints = _endpoints(reach_jwt_secret=AWKWARD_SECRET)
    lines = env_lines(endpoints)
    assert lines[0] == "export REACH_SYNC_BOOTSTRAP_SERVERS=127.0.0.1:39092"
    assert "export REACH_SYNC_REACH_URL=http://127.0.0.1:38080" in lines
    assert "export REACH_SYNC_SESSION_TIMEOUT_MS=6000" in lines
    assert "export REACH_SYNC_LEAVE_GROUP_ON_CLOSE=false" in lines
    assert f"export REACH_SYNC_JWT_SECRET={shlex.quote(AWKWARD_SECRET)}" in lines
    assert [line.split("=", 1)[0] for line in lines] == [
        f"export {name}" for name in stack_env(endpoints)
    ]


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_a_shell_that_evals_the_lines_has_exactly_the_stacks_values() -> None:
    endpoints = _endpoints(reach_jwt_secret=AWKWARD_SECRET)
    script = "\n".join(env_lines(endpoints)) + '\nenv | grep "^REACH_SYNC_"'
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REACH_SYNC_")}
    out = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env=clean, check=True
    ).stdout
    seen = dict(line.split("=", 1) for line in out.splitlines())
    assert seen == stack_env(endpoints)


def test_the_variables_are_all_the_example_needs_and_the_demos_own() -> None:
    endpoints = _endpoints()
    definition = load_definition(EXAMPLE, stack_env(endpoints))
    assert definition.destination.base_url == "http://127.0.0.1:38080"
    assert definition.source.kafka.session_timeout_ms == 6000
    assert definition.source.kafka.leave_group_on_close is False
    assert definition.source.kafka.group_id == "reach-sync-shop"  # the definition's own
    demo = demo_env(endpoints, group="g")
    assert demo == {**stack_env(endpoints), "REACH_SYNC_GROUP_ID": "g"}


def test_without_a_stack_it_says_so_prints_nothing_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dev", "env", "--state-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"dev: no ready stack in {tmp_path.resolve()}; start one with "
        f"`reach-sync dev up --state-dir {tmp_path}`\n"
    )


def test_a_stack_whose_supervisor_is_gone_is_no_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state file left by a stack that was killed: its endpoints lead nowhere."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    state = {"status": "ready", "supervisor_pid": gone.pid, "endpoints": _endpoints().to_json()}
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    assert main(["dev", "env", "--state-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "no ready stack" in err
