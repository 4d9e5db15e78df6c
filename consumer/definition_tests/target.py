"""The partner's definition, pointed at the throwaway servers a test run starts.

Loading must not need the production environment: a ``${VAR}`` without default or a
``*_env`` secret that is not set gets a placeholder (the fields it could fill are the ones
replaced here anyway: database, Reach, Redis, broker). Everything else is the partner's own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from consumer.config import Auth, SyncDefinition
from consumer.config_file import load_definition

__all__ = ["Endpoints", "aimed", "load_for_test"]

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
# What an unset name stands for until it is replaced: it must pass the definition's own checks
# (base_url is the one field with a pattern that reads one).
_PLACEHOLDER_URL = "http://127.0.0.1:9"
_PLACEHOLDER = "reach-sync-test"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The throwaway servers, as the definition needs them."""

    database_dsn: str
    redis_url: str
    reach_url: str
    partner_id: str
    partner_secret: str
    key_prefix: str
    bootstrap_servers: str = ""


def _unset_names(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """Each environment variable the file names that is not set, with where."""
    if isinstance(node, dict):
        for key, value in node.items():
            named = isinstance(key, str) and key.endswith("_env") and isinstance(value, str)
            if named and value not in os.environ:
                yield value, f"{path}.{key}"
            yield from _unset_names(value, f"{path}.{key}")
    elif isinstance(node, list):
        for value in node:
            yield from _unset_names(value, path)
    elif isinstance(node, str):
        for match in _REF.finditer(node):
            if match.group(2) is None and match.group(1) not in os.environ:
                yield match.group(1), path


def load_for_test(path: Path) -> SyncDefinition:
    """The definition as ``validate`` reads it, with placeholders for what is not set."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        raw = None  # load_definition says what is wrong, with the line
    env = dict(os.environ)
    for name, where in _unset_names(raw, ""):
        env[name] = _PLACEHOLDER_URL if where.endswith("base_url") else _PLACEHOLDER
    return load_definition(path, env)


def aimed(definition: SyncDefinition, at: Endpoints) -> SyncDefinition:
    """The same definition talking to ``at``: its database, the sandbox as Reach (as the
    sandbox's partner, tenants by external id), its Redis under a prefix of the run's own."""
    source = definition.source
    database = source.database.model_copy(update={"dsn": SecretStr(at.database_dsn)})
    kafka = source.kafka.model_copy(
        update={"bootstrap_servers": at.bootstrap_servers or source.kafka.bootstrap_servers}
    )
    destination = definition.destination.model_copy(
        update={
            "base_url": at.reach_url,
            "auth": Auth(
                mode="jwt",
                partner_id=at.partner_id,
                secret=SecretStr(at.partner_secret),
                token_ttl_s=definition.destination.auth.token_ttl_s,
            ),
            "tenant_id_mode": "external_id",
        }
    )
    redis = definition.redis.model_copy(
        update={"url": SecretStr(at.redis_url), "key_prefix": at.key_prefix}
    )
    return definition.model_copy(
        update={
            "source": source.model_copy(update={"database": database, "kafka": kafka}),
            "destination": destination,
            "redis": redis,
        }
    )
