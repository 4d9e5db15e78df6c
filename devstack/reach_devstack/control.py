"""Requests to the supervisor of a running stack: stop, start or restart one component.

``reach-sync dev stop|start|restart`` runs in another process than the supervisor that owns the
servers, so it asks through files in ``<state-dir>/control``: a request ``<id>.json``, answered
by ``<id>.result.json``. Each is written to a temporary name and renamed, so a reader never sees
half a file. The supervisor looks for requests between its health checks.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from reach_devstack.process import ComponentError

__all__ = [
    "ACTIONS",
    "CONTROL_DIR",
    "Controller",
    "Request",
    "pending_requests",
    "serve",
    "wait_result",
    "write_request",
    "write_result",
]

CONTROL_DIR = "control"
ACTIONS = ("stop", "start", "restart")
PAST_TENSE = {"stop": "stopped", "start": "started", "restart": "restarted"}
_REQUEST_SUFFIX = ".json"
_RESULT_SUFFIX = ".result.json"
# How often a waiting command looks for its answer.
_RESULT_POLL_S = 0.1


class Controller(Protocol):
    """What the supervisor's stack offers to requests (``LocalStack``)."""

    def stop_component(self, name: str) -> None: ...
    def start_component(self, name: str) -> None: ...
    def restart_component(self, name: str) -> None: ...


@dataclass(frozen=True)
class Request:
    id: str
    action: str
    component: str


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a hidden temporary name, then rename: readers see the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    tmp.replace(path)


def write_request(state_dir: Path, action: str, component: str) -> str:
    """Leave a request for the supervisor; returns its id (for ``wait_result``)."""
    if action not in ACTIONS:
        raise ValueError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    request_id = uuid.uuid4().hex
    path = state_dir / CONTROL_DIR / f"{request_id}{_REQUEST_SUFFIX}"
    _write_atomic(path, {"action": action, "component": component})
    return request_id


def pending_requests(state_dir: Path) -> list[Request | tuple[str, str]]:
    """The requests waiting, oldest first; one that cannot be read is ``(id, why)``."""
    folder = state_dir / CONTROL_DIR
    try:
        paths = [
            p
            for p in folder.iterdir()
            if p.name.endswith(_REQUEST_SUFFIX)
            and not p.name.endswith(_RESULT_SUFFIX)
            and not p.name.startswith(".")
        ]
    except FileNotFoundError:
        return []
    found: list[Request | tuple[str, str]] = []
    for path in sorted(paths, key=_mtime):
        request_id = path.name.removesuffix(_REQUEST_SUFFIX)
        try:
            data = json.loads(path.read_text())
            action, component = data["action"], data["component"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            found.append((request_id, f"unreadable request: {exc}"))
            continue
        if action not in ACTIONS or not isinstance(component, str):
            found.append((request_id, f"unknown request {data!r}"))
            continue
        found.append(Request(request_id, action, component))
    return found


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def write_result(state_dir: Path, request_id: str, result: dict[str, Any]) -> None:
    """Answer a request, then remove it (so it is done once)."""
    folder = state_dir / CONTROL_DIR
    _write_atomic(folder / f"{request_id}{_RESULT_SUFFIX}", result)
    (folder / f"{request_id}{_REQUEST_SUFFIX}").unlink(missing_ok=True)


def perform(controller: Controller, request: Request) -> dict[str, Any]:
    """Carry out one request; the answer says how long it took or why it failed."""
    started = time.monotonic()
    action = {
        "stop": controller.stop_component,
        "start": controller.start_component,
        "restart": controller.restart_component,
    }[request.action]
    try:
        action(request.component)
    except ComponentError as exc:
        return {"ok": False, "error": exc.details()}
    except Exception as exc:
        # Anything else is answered too: the supervisor, and the stack with it, carries on.
        return {"ok": False, "error": f"{request.component}: {request.action} failed: {exc!r}"}
    return {"ok": True, "seconds": round(time.monotonic() - started, 2)}


def serve(
    state_dir: Path, controller: Controller, before_answer: Callable[[], None] | None = None
) -> int:
    """Answer every waiting request in turn; returns how many there were.

    ``before_answer`` runs after each action and before its answer (the supervisor rewrites its
    state file there), so that a command that got its answer reads the state that follows it.
    """
    requests = pending_requests(state_dir)
    for request in requests:
        if isinstance(request, Request):
            result = perform(controller, request)
            if before_answer is not None:
                before_answer()
            write_result(state_dir, request.id, result)
        else:
            request_id, why = request
            write_result(state_dir, request_id, {"ok": False, "error": why})
    return len(requests)


def wait_result(
    state_dir: Path, request_id: str, timeout_s: float, alive: Callable[[], bool]
) -> dict[str, Any]:
    """The supervisor's answer, removed once read; an error answer if it does not come within
    ``timeout_s`` or the supervisor (``alive``) is gone first."""
    path = state_dir / CONTROL_DIR / f"{request_id}{_RESULT_SUFFIX}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            pass
        else:
            path.unlink(missing_ok=True)
            return result
        if not alive():
            # Looked at once more: it may have answered just before it went.
            if path.exists():
                continue
            _withdraw(state_dir, request_id)
            return {"ok": False, "error": "the stack's supervisor ended before it answered"}
        if time.monotonic() > deadline:
            _withdraw(state_dir, request_id)
            return {"ok": False, "error": f"no answer from the stack within {timeout_s:g} s"}
        time.sleep(_RESULT_POLL_S)


def _withdraw(state_dir: Path, request_id: str) -> None:
    """Take back a request nobody answered, so that a later supervisor does not act on it."""
    (state_dir / CONTROL_DIR / f"{request_id}{_REQUEST_SUFFIX}").unlink(missing_ok=True)
