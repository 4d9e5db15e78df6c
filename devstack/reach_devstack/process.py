"""Child processes of the local stack: started, probed, stopped, never orphaned.

Every server is started in its own process group, with its output in a log file, and with
``PR_SET_PDEATHSIG`` set so the kernel kills it when the process that started it dies, even by
``kill -9``. That is what keeps a crashed test run or demo from leaving servers behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ComponentError",
    "ManagedProcess",
    "ProcessSpec",
    "RunAs",
    "free_port",
    "log_tail",
    "require_free_port",
    "unprivileged_user",
    "wait_until",
]

# prctl(2) option number from <linux/prctl.h>; stable kernel ABI.
_PR_SET_PDEATHSIG = 1
# How long a server gets between SIGTERM (or its own stop signal) and SIGKILL. Postgres' fast
# shutdown and Debezium's engine close finish in a few seconds on this machine size.
STOP_GRACE_S = 15.0
# Lines of a component's log shown when it fails to start: enough for the error, one screen.
LOG_TAIL_LINES = 20


class ComponentError(RuntimeError):
    """A component of the local stack could not start or stop; the message names it and the fix."""

    def __init__(self, component: str, reason: str, log_path: Path | None = None) -> None:
        self.component = component
        self.reason = reason
        self.log_path = log_path
        where = f" (log: {log_path})" if log_path else ""
        super().__init__(f"{component}: {reason}{where}")

    def details(self) -> str:
        """The one-line error plus the tail of the component's log, for a person to read."""
        if self.log_path is None:
            return str(self)
        tail = log_tail(self.log_path)
        return f"{self}\n--- last lines of {self.log_path} ---\n{tail}" if tail else str(self)


@dataclass(frozen=True)
class RunAs:
    """An unprivileged identity for servers that refuse to run as root (PostgreSQL)."""

    uid: int
    gid: int
    name: str


def unprivileged_user() -> RunAs | None:
    """The identity to drop to when running as root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid, name=entry.pw_name)


@dataclass(frozen=True)
class ProcessSpec:
    """What to run for one component, and how to stop it."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    run_as: RunAs | None = None
    # Postgres treats SIGTERM as "smart" shutdown (waits for clients); SIGINT is the fast one.
    stop_signal: signal.Signals = signal.SIGTERM
    # Between the stop signal and SIGKILL, unless ``stop()`` is given its own.
    stop_grace_s: float = STOP_GRACE_S
    # Run by ``stop()`` once the process has ended: removes what it leaves outside the state
    # directory.
    after_stop: Callable[[], None] | None = None


def _child_setup(run_as: RunAs | None, parent_pid: int) -> Callable[[], None]:
    """Build the function the child runs between fork and exec.

    The parent-death signal is cleared by the kernel when credentials change, so it is set
    after dropping privileges; and if the parent already died before we got here, exit.
    """

    def setup() -> None:
        if run_as is not None:
            os.setgroups([])
            os.setgid(run_as.gid)
            os.setuid(run_as.uid)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return setup


@dataclass
class ManagedProcess:
    """One running component. Stop it with ``stop()``; it also dies with its parent.

    "Its parent" is the thread that called ``start()``: Linux sends the parent-death signal when
    that thread ends, not the process. Start components from a thread that lives as long as
    they should (the main thread, or one kept for the purpose, as the chaos run does).
    """

    spec: ProcessSpec
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.spec.env is None else self.spec.env)
        with self.spec.log_path.open("ab") as log:
            try:
                self._popen = subprocess.Popen(
                    list(self.spec.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.spec.cwd,
                    start_new_session=True,
                    preexec_fn=_child_setup(self.spec.run_as, os.getpid()),
                )
            except OSError as exc:
                raise ComponentError(
                    self.spec.name, f"cannot run {self.spec.argv[0]}: {exc.strerror}"
                ) from exc

    def exit_code(self) -> int | None:
        """None while running; the exit code once it has ended."""
        return None if self._popen is None else self._popen.poll()

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process itself (not its group), as an orchestrator would."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        """Its exit code once it has ended; TimeoutError if it has not within ``timeout_s``."""
        if self._popen is None:
            raise RuntimeError("the process was never started")
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"still running after {timeout_s:g} s") from exc

    def stop(self, grace_s: float | None = None) -> None:
        """Ask the process group to stop, then kill it if it has not within ``grace_s`` (by
        default the spec's ``stop_grace_s``)."""
        if self._popen is None:
            return
        if grace_s is None:
            grace_s = self.spec.stop_grace_s
        pgid = self._popen.pid  # start_new_session makes the child its own group leader
        if self._popen.poll() is None:
            _signal_group(pgid, self.spec.stop_signal)
            try:
                self._popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self._popen.wait(timeout=5)
        # Anything left in the group (workers the server forked) goes too.
        _signal_group(pgid, signal.SIGKILL)
        if self.spec.after_stop is not None:
            self.spec.after_stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, or an empty string when there is none yet."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; the server binding it is the real check."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def require_free_port(component: str, port: int, option: str, host: str = "127.0.0.1") -> None:
    """Fail before starting anything when a requested port is taken, naming the fix."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ComponentError(
                component,
                f"port {port} on {host} is in use; choose another with {option} "
                "(or 0 for a free one), or stop what holds it",
            ) from exc


def wait_until(
    process: ManagedProcess,
    probe: Callable[[], bool],
    timeout_s: float,
    what: str = "ready",
) -> float:
    """Poll ``probe`` until it holds; fail early if the process exits. Returns seconds taken."""
    started = time.monotonic()
    delay = 0.05
    while True:
        code = process.exit_code()
        if code is not None:
            raise ComponentError(
                process.spec.name, f"exited with code {code} before {what}", process.spec.log_path
            )
        if probe():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise ComponentError(
                process.spec.name,
                f"not {what} after {timeout_s:.0f} s",
                process.spec.log_path,
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
