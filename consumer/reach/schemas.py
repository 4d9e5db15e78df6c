"""Reach's schema definitions as the partner routes list them (docs/reach-api.md §3.8, §4.4).

``GET /partner/schema-definitions`` answers every active definition of the partner; reach-sync
reads them only to check a sync definition against them (consumer/reach_check.py), so only the
name, the id, the external id field and the JSON Schema are kept. Reach answers snake_case and
camelCase keys both (§3.8); either is read. The request itself is the client's
(``ReachClient.schema_definitions``): auth, transport errors and the one classification table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from consumer.errors import BadRecord, ConfigurationError, SyncError
from consumer.reach.classify import read_json

__all__ = ["SCHEMAS_PATH", "SchemaDefinition", "parse_schema_definitions", "schemas_refused"]

SCHEMAS_PATH = "/partner/schema-definitions"


@dataclass(frozen=True, slots=True)
class SchemaDefinition:
    """One Reach schema: its name (matched case-insensitively, §4.4), the field its records'
    external id is read from, and its JSON Schema (``{}`` when Reach gave none)."""

    name: str
    external_id_field: str | None
    schema: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


def parse_schema_definitions(response: httpx.Response) -> list[SchemaDefinition]:
    """The definitions of a successful answer; an answer without a ``data`` list is refused
    (the client and Reach disagree on the contract: a person has to look)."""
    body = read_json(response)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        request = f"{response.request.method} {response.request.url.path}"
        raise ConfigurationError(
            f"Reach {request} answered {response.status_code} with no data list",
            status=response.status_code,
            scope="api contract",
        )
    found = []
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        if entry.get("deactivated_at") or entry.get("deactivatedAt"):
            continue  # the route lists active ones only; one that says otherwise is not used
        external_id = _either(entry, "external_id_field", "externalIdField")
        schema = entry.get("schema")
        schema_id = entry.get("id")
        found.append(
            SchemaDefinition(
                entry["name"],
                external_id if isinstance(external_id, str) and external_id else None,
                schema if isinstance(schema, dict) else {},
                schema_id if isinstance(schema_id, str) and schema_id else None,
            )
        )
    return found


def schemas_refused(response: httpx.Response, error: SyncError, *, static: bool) -> SyncError:
    """The client's classification of a refused read, re-scoped where it assumes records ride
    on the call: none do here. A 404 is a base_url that is not Reach's (the route exists), a
    4xx read as bad data is the client and Reach disagreeing. A refused static key is said as
    such: the docs give ``/partner/*`` a partner-scoped JWT only (§2.1, §7 Q1)."""
    status = response.status_code
    if status in (401, 403) and static:
        return ConfigurationError(
            f"{error} (destination.auth.mode is static: Reach documents only a partner-scoped "
            "JWT for /partner/* routes, so a static key may not read the schema definitions; "
            "use auth mode jwt to check against Reach)",
            status=status,
            scope="credential",
        )
    if status == 404 or isinstance(error, BadRecord):
        return ConfigurationError(str(error), status=status, scope="api contract")
    return error


def _either(entry: dict[str, Any], snake: str, camel: str) -> Any:
    value = entry.get(snake)
    return entry.get(camel) if value is None else value
