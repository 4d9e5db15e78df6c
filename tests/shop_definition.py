"""The sample shop's sync definition with a placeholder environment, for tests that need the
definition but no servers (nothing connects to these addresses)."""

from __future__ import annotations

from pathlib import Path

from consumer.config import SyncDefinition
from consumer.config_file import load_definition

EXAMPLE = Path(__file__).parents[1] / "examples" / "shop.yaml"
OFFLINE_ENV = {
    "REACH_SYNC_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "REACH_SYNC_DATABASE_URL": "postgresql://reach:pw@127.0.0.1:5432/shop",
    "REACH_SYNC_PARTNER_ID": "partner-1",
    "REACH_SYNC_JWT_SECRET": "s3cret-value",
    "REACH_SYNC_REDIS_URL": "redis://127.0.0.1:6379/0",
    "REACH_SYNC_REACH_URL": "http://127.0.0.1:8080",
}


def shop_definition(**env: str) -> SyncDefinition:
    """examples/shop.yaml loaded with the placeholder environment, plus ``env`` overrides."""
    return load_definition(EXAMPLE, {**OFFLINE_ENV, **env})
