"""`reach-sync dev stop|start|restart` without servers: the request and answer files between the
command and the supervisor, and the stack's refusals (unknown component, data it would lose)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reach_devstack import control
from reach_devstack.process import ComponentError, ManagedProcess, ProcessSpec
from reach_devstack.stack import LocalStack, StackOptions

from consumer.cli.main import main


class FakeStack:
    """Records what it was asked; fails for the components named in ``failing``."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.failing = failing

    def _act(self, action: str, name: str) -> None:
        self.calls.append((action, name))
        if name in self.failing:
            raise ComponentError(name, "did not come up")

    def stop_component(self, name: str) -> None:
        self._act("stop", name)

    def start_component(self, name: str) -> None:
        self._act("start", name)

    def restart_component(self, name: str) -> None:
        self._act("restart", name)


def test_a_request_is_served_once_and_its_answer_read_once(tmp_path: Path) -> None:
    request_id = control.write_request(tmp_path, "restart", "redis")
    folder = tmp_path / control.CONTROL_DIR
    assert json.loads((folder / f"{request_id}.json").read_text()) == {
        "action": "restart",
        "component": "redis",
    }
    assert (folder / f"{request_id}.json").stat().st_mode & 0o777 == 0o600
    stack = FakeStack()

    assert control.serve(tmp_path, stack) == 1
    assert control.serve(tmp_path, stack) == 0
    assert stack.calls == [("restart", "redis")]
    result = control.wait_result(tmp_path, request_id, 1.0, alive=lambda: True)
    assert result["ok"] is True
    assert isinstance(result["seconds"], float)
    assert list(folder.iterdir()) == []


def test_requests_are_served_in_order_and_a_failure_is_answered_with_its_reason(
    tmp_path: Path,
) -> None:
    first = control.write_request(tmp_path, "stop", "redis")
    second = control.write_request(tmp_path, "start", "postgres")
    stack = FakeStack(failing=("postgres",))
    answered_before_state: list[bool] = []

    def before_answer() -> None:
        # The supervisor's state is rewritten before the command can read the answer.
        answered_before_state.append(any(tmp_path.glob("control/*.result.json")))

    assert control.serve(tmp_path, stack, before_answer=before_answer) == 2
    assert stack.calls == [("stop", "redis"), ("start", "postgres")]
    assert answered_before_state == [False, True]
    assert control.wait_result(tmp_path, first, 1.0, alive=lambda: True)["ok"] is True
    failed = control.wait_result(tmp_path, second, 1.0, alive=lambda: True)
    assert failed == {"ok": False, "error": "postgres: did not come up"}


def test_half_written_and_unreadable_requests(tmp_path: Path) -> None:
    folder = tmp_path / control.CONTROL_DIR
    folder.mkdir()
    (folder / ".abc.json.tmp").write_text('{"action": "st')  # still being written: not seen
    (folder / "bad.json").write_text("not json")
    (folder / "odd.json").write_text(json.dumps({"action": "explode", "component": "redis"}))
    stack = FakeStack()

    assert control.serve(tmp_path, stack) == 2
    assert stack.calls == []
    bad = control.wait_result(tmp_path, "bad", 1.0, alive=lambda: True)
    assert bad["ok"] is False and bad["error"].startswith("unreadable request")
    odd = control.wait_result(tmp_path, "odd", 1.0, alive=lambda: True)
    assert odd["ok"] is False and "unknown request" in odd["error"]
    with pytest.raises(ValueError, match="not one of stop, start, restart"):
        control.write_request(tmp_path, "explode", "redis")


def test_no_answer_in_time_or_no_supervisor_withdraws_the_request(tmp_path: Path) -> None:
    late = control.write_request(tmp_path, "restart", "debezium")
    result = control.wait_result(tmp_path, late, 0.2, alive=lambda: True)
    assert result == {"ok": False, "error": "no answer from the stack within 0.2 s"}
    gone = control.write_request(tmp_path, "restart", "debezium")
    result = control.wait_result(tmp_path, gone, 60.0, alive=lambda: False)
    assert result == {"ok": False, "error": "the stack's supervisor ended before it answered"}
    assert list((tmp_path / control.CONTROL_DIR).iterdir()) == []


def _unstarted_stack(tmp_path: Path, *names: str, durable: bool = False) -> LocalStack:
    """A stack that knows these components but never started them."""
    stack = LocalStack(StackOptions(state_dir=tmp_path, durable_broker=durable))
    for name in names:
        stack.processes[name] = ManagedProcess(
            ProcessSpec(name=name, argv=["true"], log_path=tmp_path / f"{name}.log")
        )
    return stack


def test_an_unknown_component_is_named_with_the_stacks_own(tmp_path: Path) -> None:
    stack = _unstarted_stack(tmp_path, "broker", "redis", "postgres")
    for action in (stack.stop_component, stack.start_component, stack.restart_component):
        with pytest.raises(ComponentError) as unknown:
            action("kafka")
        assert str(unknown.value) == (
            "kafka: no such component in this stack; it has: broker, redis, postgres"
        )


def test_only_what_would_lose_the_brokers_data_is_refused(tmp_path: Path) -> None:
    memory = _unstarted_stack(tmp_path, "broker", "redis")
    for action in (memory.stop_component, memory.restart_component):
        with pytest.raises(ComponentError) as refused:
            action("broker")
        assert str(refused.value) == (
            "broker: memory storage: a broker restart loses every topic and offset, so it is "
            "not stopped alone; start the stack with `reach-sync dev up --durable-broker` for a "
            "broker that keeps them"
        )
    # Durable: the broker's data is in the s3 component's files, so both may stop.
    durable = _unstarted_stack(tmp_path, "s3", "broker", durable=True)
    durable.stop_component("broker")
    durable.stop_component("broker")  # already stopped: nothing to do
    assert durable.health() == {"s3": "running", "broker": "stopped"}
    durable.stop_component("s3")
    assert durable.health() == {"s3": "stopped", "broker": "stopped"}


def test_without_a_stack_the_commands_say_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dev", "restart", "redis", "--state-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"dev: no ready stack in {tmp_path.resolve()}; start one with "
        f"`reach-sync dev up --state-dir {tmp_path}`\n"
    )
    assert not (tmp_path / control.CONTROL_DIR).exists()  # no request left behind
