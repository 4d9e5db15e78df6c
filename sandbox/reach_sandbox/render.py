"""How stored things look on the wire: timestamps, the dual-case Resource object, ids.

Reach returns resource keys twice, in snake_case and camelCase (docs/reach-api.md §3.5); doing
that in one place keeps every endpoint consistent.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

__all__ = ["dual_case", "iso", "platform_id", "render_resource"]

_PLATFORM_NAMESPACE = uuid.UUID("5b0f6a3e-7f5c-4a43-9a8e-3f1d2c4b5a60")


def iso(ts: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC with milliseconds, the format Reach's examples use."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def platform_id(partner_id: str) -> str:
    """A stable uuid for a partner ("platform" in resource rows), the same across restarts."""
    return str(uuid.uuid5(_PLATFORM_NAMESPACE, partner_id))


def dual_case(pairs: dict[str, Any]) -> dict[str, Any]:
    """Emit each snake_case key and its camelCase twin with the same value."""
    out: dict[str, Any] = {}
    for snake, value in pairs.items():
        out[snake] = value
        head, *rest = snake.split("_")
        out[head + "".join(part.title() for part in rest)] = value
    return out


def render_resource(
    *,
    resource_id: str,
    schema_id: str,
    partner_id: str,
    tenant_id: str,
    external_id: str,
    created_at: float,
    updated_at: float,
    data: dict[str, Any],
) -> dict[str, Any]:
    """The Resource object of docs/reach-api.md §3.5."""
    body = dual_case(
        {
            "schema_definition_id": schema_id,
            "platform_id": platform_id(partner_id),
            "business_id": tenant_id,
            "resource_external_id": external_id,
            "created_at": iso(created_at),
            "updated_at": iso(updated_at),
        }
    )
    body["id"] = resource_id
    body["data"] = data
    return body
