"""The C reader's signature (_avro_scan.c); absent when the extension was not built."""

from collections.abc import Callable
from typing import Any

def scan(
    plan: tuple[Any, ...], buf: bytes, pos: int, float32: Callable[[float], float], /
) -> dict[str, Any]: ...
