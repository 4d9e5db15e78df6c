"""Reach's tenants through the partner routes: find one, mark its historical data integrated.

Reach has no get-by-external-id call (docs/reach-api.md §3.7 [OPEN]), so a tenant is found by
walking ``GET /partner/tenants`` page by page. reach-sync names a tenant by the value it sends
in ``reach-tenant-id``, the external id or Reach's id per ``destination.tenant_id_mode``
(§7 Q3), and matches on the same field, so the tenant marked is the one the sync writes to.
Sending stays the client's (auth, rate limiter, transport errors): ``ReachClient`` hands in its
send seam, bound to the tenant, and its classification of refused answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson

from consumer.errors import BadRecord, ConfigurationError, SyncError
from consumer.reach.classify import read_json

__all__ = ["PAGE_SIZE", "TenantCall", "TenantIdMode", "TenantInfo", "Tenants", "utc_stamp"]

# Tenants asked for per page: the sandbox's largest; Reach documents neither ``limit`` nor its
# largest value for this list (§3.7, §7 Q15), only ``cursor`` and ``pagination``.
PAGE_SIZE = 100
_PATH = "/partner/tenants"

TenantIdMode = Literal["external_id", "id"]
TenantCall = Literal["list_tenants", "patch_tenant"]
# (operation, method, path, query, body) -> Reach's answer, without the reach-tenant-id header
# (§2.1: /partner/* takes none); a transport failure raises its classified error.
Send = Callable[
    [TenantCall, str, str, Mapping[str, str] | None, bytes | None], Awaitable[httpx.Response]
]
# A non-2xx answer -> its error, by the client's one table (classify.classify).
Classify = Callable[[httpx.Response], SyncError]


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """A Reach tenant as far as reach-sync cares: ids, and when its data integration completed."""

    id: str
    external_id: str | None
    data_integration_completed_at: str | None


def utc_stamp(at: datetime) -> str:
    """``at`` as Reach's timestamps look: ISO-8601 in UTC, milliseconds, ``Z``.

    A naive datetime is refused: which instant it means is a guess this call will not make.
    """
    if at.utcoffset() is None:
        raise ValueError(f"{at!r} has no timezone; pass an aware datetime")
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Tenants:
    """The tenant calls for one tenant name, over the client's ``send`` and ``classify``."""

    tenant: str
    mode: TenantIdMode
    send: Send
    classify: Classify

    async def find(self) -> TenantInfo | None:
        """Walk the pages until the tenant whose external id (or id, per ``mode``) matches."""
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            params = {"limit": str(PAGE_SIZE)}
            if cursor is not None:
                params["cursor"] = cursor
            response = await self.send("list_tenants", "GET", _PATH, params, None)
            if not response.is_success:
                raise self._refused(response)
            results, more, cursor = _page(response)
            for entry in results:
                info = _tenant(entry)
                if info is not None and self._matches(info):
                    return info
            if not more:
                return None
            if cursor is None or cursor in seen:  # a page that would never end the walk
                raise _contract(response, "hasNextPage without a new cursor")
            seen.add(cursor)

    async def mark_data_integration_complete(self, at: datetime) -> TenantInfo:
        """Set ``dataIntegrationCompletedAt`` to ``at``; the tenant as Reach answered.

        Reach's answer to a PATCH carries ``id`` and the ``dataIntegrationComplete`` flag, not
        the external id or the timestamp (§3.7): those are the ones found and sent, once the
        flag confirms them.
        """
        stamp = utc_stamp(at)
        found = await self.find()
        if found is None:
            field = "external id" if self.mode == "external_id" else "id"
            raise ConfigurationError(
                f"Reach has no tenant with {field} {self.tenant!r} (destination.tenant_id_mode"
                f" is {self.mode!r}); create it or fix the tenant name",
                scope="tenant",
            )
        body = orjson.dumps({"dataIntegrationCompletedAt": stamp})
        path = f"{_PATH}/{quote(found.id, safe='')}"
        response = await self.send("patch_tenant", "PATCH", path, None, body)
        if not response.is_success:
            raise self._refused(response)
        answer = read_json(response)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict) or data.get("id") != found.id:
            raise _contract(response, f"no data.id {found.id!r}")
        if data.get("dataIntegrationComplete") is False:
            raise _contract(response, "dataIntegrationComplete still false")
        external_id = data.get("externalId")
        completed_at = data.get("dataIntegrationCompletedAt")
        return TenantInfo(
            found.id,
            external_id if isinstance(external_id, str) else found.external_id,
            completed_at if isinstance(completed_at, str) else stamp,
        )

    def _matches(self, info: TenantInfo) -> bool:
        key = info.external_id if self.mode == "external_id" else info.id
        return key == self.tenant

    def _refused(self, response: httpx.Response) -> SyncError:
        """The client's classification, re-scoped where it assumes records ride on the call.

        No record does here: a 4xx it reads as bad data is the client and Reach disagreeing,
        and a 404 on the PATCH is the tenant gone since it was found, not an unknown schema.
        """
        error = self.classify(response)
        status = response.status_code
        if status == 404:
            return ConfigurationError(str(error), status=status, scope="tenant")
        if isinstance(error, BadRecord):
            return ConfigurationError(str(error), status=status, scope="api contract")
        return error


def _page(response: httpx.Response) -> tuple[list[Any], bool, str | None]:
    """``results``, ``hasNextPage`` and ``cursor`` of one page; a malformed page is refused."""
    body = read_json(response)
    data = body.get("data") if isinstance(body, dict) else None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(results, list):
        raise _contract(response, "no data.results list")
    pagination = data.get("pagination")
    more = isinstance(pagination, dict) and pagination.get("hasNextPage") is True
    cursor = pagination.get("cursor") if isinstance(pagination, dict) else None
    return results, more, cursor if isinstance(cursor, str) and cursor else None


def _tenant(entry: Any) -> TenantInfo | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        return None
    external_id = entry.get("externalId")
    completed_at = entry.get("dataIntegrationCompletedAt")
    return TenantInfo(
        entry["id"],
        external_id if isinstance(external_id, str) else None,
        completed_at if isinstance(completed_at, str) else None,
    )


def _contract(response: httpx.Response, what: str) -> ConfigurationError:
    request = f"{response.request.method} {response.request.url.path}"
    return ConfigurationError(
        f"Reach {request} answered {response.status_code} with {what}",
        status=response.status_code,
        scope="api contract",
    )
