"""The Reach sandbox for tests: the real server as a subprocess, and helpers to talk to it.

Both the sandbox's own tests (sandbox/tests) and reach-sync's (tests/) use it, so it lives in the
package and needs nothing of the local stack: the server runs as a plain child process
(``SandboxProcess``: its own process group, its output in a log file, killed by the kernel when
the test process dies). Besides the sandbox's own dependencies it needs httpx and pytest (the
``testing`` extra). Plain functions and classes, so a test module builds the fixtures it needs
without importing fixture names. Typical use::

    @pytest.fixture(scope="module")
    def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
        with running_sandbox(tmp_path_factory.mktemp("sandbox")) as server:
            yield server

    def test_something(sandbox: SandboxServer) -> None:
        tenant = sandbox.new_tenant()                  # a fresh tenant: tests isolate by name
        with sandbox.client(tenant) as api:            # partner JWT + reach-tenant-id
            api.post("/api/resources/customers", json={"data": {"customerId": "c1"}})
        sandbox.history(tenant, "customers", "c1")     # every state it went through

For a server with its own config (low rate limits, async validation...), use
``SandboxFactory`` (``factory.start(sandbox_config(...))``, all stopped by ``factory.close()``) or
the ``sandbox_factory`` fixture below, which a conftest can expose with
``pytest_plugins = ["reach_sandbox.testing"]``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from reach_sandbox.cli import server_command
from reach_sandbox.config import SandboxConfig, dev_config, write_sandbox_config

__all__ = [
    "PARTNER_ID",
    "TENANTS",
    "SandboxFactory",
    "SandboxProcess",
    "SandboxServer",
    "SandboxStartError",
    "mint_partner_jwt",
    "mint_tenant_jwt",
    "running_sandbox",
    "sandbox_config",
    "sandbox_factory",
]

PARTNER_ID = "reach-sync-dev"
# 32+ bytes: PyJWT warns about shorter HMAC keys, and warnings are errors in this suite.
PARTNER_SECRET = "test-partner-secret-0123456789-abcdefgh"
STATIC_KEY = "rk_test_static_key_0123456789"
ADMIN_TOKEN = "test-admin-token-0123456789"
TENANTS: tuple[tuple[str, str], ...] = (
    ("tenant-1", "merchant-1"),
    ("tenant-2", "merchant-2"),
    ("tenant-3", "merchant-3"),
)
# The server is up in about half a second; a loaded 2-core machine can take several.
READY_TIMEOUT_S = 30.0
TERMINAL = frozenset({"success", "partial_success", "failed"})
# Between SIGTERM and SIGKILL: the sandbox stops in well under a second.
STOP_GRACE_S = 15.0
# prctl(2) option number from <linux/prctl.h>; stable kernel ABI.
_PR_SET_PDEATHSIG = 1
# Lines of the server's log quoted when it fails to start.
_LOG_TAIL_LINES = 20


class SandboxStartError(RuntimeError):
    """The server exited or did not announce its port in time; the message quotes its log."""


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """What the child runs between fork and exec: on Linux, ask for SIGKILL when the test process
    dies; and exit at once if that has already happened."""

    def setup() -> None:
        if sys.platform == "linux":
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return setup


class SandboxProcess:
    """The server as a child process in its own process group, with its output in a log file."""

    def __init__(self, argv: Sequence[str], log_path: Path) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_child_setup(os.getpid()),
            )

    def exit_code(self) -> int | None:
        """None while running; the exit code once it has ended."""
        return None if self._popen is None else self._popen.poll()

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server itself (not its group)."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        """Its exit code once it has ended; TimeoutError if it has not within ``timeout_s``."""
        if self._popen is None:
            raise RuntimeError("the sandbox was never started")
        try:
            return self._popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"still running after {timeout_s:g} s") from exc

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float) -> None:
        """Poll ``probe`` until it holds; SandboxStartError if the server exits or time runs out."""
        started = time.monotonic()
        delay = 0.05
        while not probe():
            code = self.exit_code()
            if code is not None:
                raise SandboxStartError(self._failure(f"exited with code {code} before ready"))
            if time.monotonic() - started > timeout_s:
                raise SandboxStartError(self._failure(f"not ready after {timeout_s:.0f} s"))
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the process group, SIGKILL if it has not ended within ``grace_s``."""
        if self._popen is None:
            return
        pgid = self._popen.pid  # start_new_session makes the child its own group leader
        if self._popen.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self._popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self._popen.wait(timeout=5)
        # Anything left in the group goes too.
        _signal_group(pgid, signal.SIGKILL)

    def _failure(self, reason: str) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        except FileNotFoundError:
            lines = []
        tail = "".join(f"\n  {line}" for line in lines)
        return f"sandbox: {reason} (log: {self.log_path}){tail}"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def sandbox_config(**overrides: Any) -> SandboxConfig:
    """The default test config (dev partner, tenants merchant-1..3) with top-level overrides."""
    base = dev_config(PARTNER_SECRET, ADMIN_TOKEN, STATIC_KEY, list(TENANTS))
    return base.model_copy(update=overrides) if overrides else base


def mint_partner_jwt(
    secret: str = PARTNER_SECRET,
    partner_id: str = PARTNER_ID,
    ttl_s: float = 3600.0,
    issued_at: float | None = None,
    **claims: Any,
) -> str:
    """A partner-scoped HS256 token as docs/reach-api.md §2.1 describes (``ttl_s`` < 0: expired)."""
    iat = int(time.time() if issued_at is None else issued_at)
    payload = {"partnerId": partner_id, "type": "partner", "iat": iat, "exp": int(iat + ttl_s)}
    return jwt.encode({**payload, **claims}, secret, algorithm="HS256")


def mint_tenant_jwt(tenant_external_id: str, secret: str = PARTNER_SECRET) -> str:
    """A tenant-scoped token (the embedded-UI kind): no tenant header needed with it."""
    now = int(time.time())
    return jwt.encode(
        {
            "email": "user@example.com",
            "name": "Test User",
            "externalId": "user-1",
            "tenantExternalId": tenant_external_id,
            "partnerId": PARTNER_ID,
            "iat": now,
            "exp": now + 3600,
        },
        secret,
        algorithm="HS256",
    )


@dataclass
class SandboxServer:
    """A running sandbox and the credentials of its config."""

    base_url: str
    config: SandboxConfig
    state_dir: Path
    process: SandboxProcess
    _token: str = field(default="", repr=False)

    @property
    def admin_token(self) -> str:
        return self.config.admin_token.get_secret_value()

    def partner_token(self) -> str:
        if not self._token:
            self._token = mint_partner_jwt()
        return self._token

    def client(self, tenant: str | None = None, token: str | None = None) -> httpx.Client:
        """A client with a partner JWT (or ``token``) and, if given, ``reach-tenant-id``."""
        headers = {"Authorization": f"Bearer {token or self.partner_token()}"}
        if tenant is not None:
            headers["reach-tenant-id"] = tenant
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30.0)

    def admin(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60.0)

    def new_tenant(self, prefix: str = "merchant") -> str:
        """Create a tenant no other test uses; returns its external id."""
        external_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        with self.client() as api:
            response = api.post(
                "/partner/tenants",
                json={"external_id": external_id, "name": external_id, "locations": []},
            )
        response.raise_for_status()
        return external_id

    def wait_batch(
        self, tenant: str, batch_id: str, timeout_s: float = 15.0, pending_ok: bool = False
    ) -> dict[str, Any]:
        """Poll a batch until terminal (or, with ``pending_ok``, only parked records remain)."""
        deadline = time.monotonic() + timeout_s
        with self.client(tenant) as api:
            while True:
                response = api.get(
                    f"/api/batches/{batch_id}", params={"includePendingDetails": "true"}
                )
                response.raise_for_status()
                batch: dict[str, Any] = response.json()["data"]
                progress = batch["progress"]
                parked = progress["processedRecords"] == progress["totalRecords"]
                if batch["status"] in TERMINAL or (pending_ok and parked):
                    return batch
                if time.monotonic() > deadline:
                    raise AssertionError(f"batch {batch_id} not finished: {batch}")
                time.sleep(0.02)

    def history(self, tenant: str, schema: str, external_id: str) -> list[dict[str, Any]]:
        """Every version of a resource, oldest first: ``op``, ``data``, ``batchId``, ``seq``..."""
        with self.admin() as admin:
            response = admin.get(
                "/_admin/history",
                params={"tenant": tenant, "schema": schema, "externalId": external_id},
            )
        response.raise_for_status()
        versions: list[dict[str, Any]] = response.json()["versions"]
        return versions

    def requests(self, tenant: str, path_prefix: str = "/api/") -> list[dict[str, Any]]:
        """The request log of one tenant (method, path, status, ...), oldest first."""
        with self.admin() as admin:
            response = admin.get(
                "/_admin/requests",
                params={"tenant": tenant, "pathPrefix": path_prefix, "limit": 10_000},
            )
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()["requests"]
        return found

    def add_fault(self, **spec: Any) -> str:
        with self.admin() as admin:
            response = admin.post("/_admin/faults", json=spec)
        response.raise_for_status()
        fault_id: str = response.json()["id"]
        return fault_id

    def clear_faults(self) -> None:
        with self.admin() as admin:
            admin.delete("/_admin/faults").raise_for_status()

    def remove_fault(self, fault_id: str) -> None:
        with self.admin() as admin:
            admin.delete(f"/_admin/faults/{fault_id}").raise_for_status()

    def wait_idle(self, timeout_s: int = 30) -> None:
        """Until every accepted batch is processed (parked records aside)."""
        with self.admin() as admin:
            admin.post(
                "/_admin/wait-idle", params={"timeoutSeconds": timeout_s}, timeout=timeout_s + 5
            ).raise_for_status()

    def stop(self) -> None:
        self.process.stop()


def _start(config: SandboxConfig, state_dir: Path) -> SandboxServer:
    state_dir.mkdir(parents=True, exist_ok=True)
    config_path = state_dir / "sandbox.yaml"
    write_sandbox_config(config, config_path)
    port_file = state_dir / "port"
    port_file.unlink(missing_ok=True)
    argv = server_command(config_path, state_dir / "data", port_file=port_file, log_level="warning")
    process = SandboxProcess(argv, state_dir / "sandbox.log")
    process.start()
    try:
        process.wait_ready(port_file.exists, READY_TIMEOUT_S)
    except Exception:
        process.stop()
        raise
    base_url = f"http://127.0.0.1:{port_file.read_text().strip()}"
    return SandboxServer(base_url, config, state_dir, process)


@contextmanager
def running_sandbox(
    state_dir: Path, config: SandboxConfig | None = None
) -> Iterator[SandboxServer]:
    """A sandbox for the duration of the block, stopped (SIGTERM) afterwards."""
    server = _start(config or sandbox_config(), state_dir)
    try:
        yield server
    finally:
        server.stop()


class SandboxFactory:
    """Starts sandboxes with their own configs under one directory; ``close`` stops them all."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._servers: list[SandboxServer] = []

    def start(self, config: SandboxConfig | None = None) -> SandboxServer:
        server = _start(config or sandbox_config(), self._root / f"sandbox-{len(self._servers)}")
        self._servers.append(server)
        return server

    def close(self) -> None:
        for server in self._servers:
            server.stop()
        self._servers.clear()


@pytest.fixture
def sandbox_factory(tmp_path: Path) -> Iterator[SandboxFactory]:
    """Function-scoped: ``sandbox_factory.start(sandbox_config(...))``; all stop at teardown."""
    factory = SandboxFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()
