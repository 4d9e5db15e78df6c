"""Who is calling, and for which tenant (docs/reach-api.md §2 and §7 Q1-Q3).

Partner-scoped HS256 JWTs (``partnerId``, ``type: "partner"``, ``iat``, ``exp``) verified with the
partner's configured secret; tenant-scoped JWTs (``tenantExternalId`` and friends) on ``/api/*``;
and static bearer keys bound to a partner. Anything else is 401. A tenant the partner does not
own is 403, whichever way it is named, so one tenant's data is never reachable with another's
credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from reach_sandbox.config import AuthConfig, SandboxConfig
from reach_sandbox.http import ApiError
from reach_sandbox.registry import Registry, Tenant

__all__ = ["Authenticator", "Principal", "key_credential", "resolve_tenant"]

# Decoded tokens are cached by their text: a client reuses one token for its hour of life, and a
# signature check per request would cost more than the rest of the auth path together.
_CACHE_MAX = 4096
_TENANT_CLAIMS = ("email", "name", "externalId", "tenantExternalId")

PrincipalKind = Literal["partner_jwt", "tenant_jwt", "static_key"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``credential`` names the credential without revealing it."""

    partner_id: str
    kind: PrincipalKind
    credential: str
    tenant_external_id: str | None = None
    expires_at: float | None = None


def _fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def key_credential(key: str) -> str:
    """How a static key is named in logs, limits and revocations: a fingerprint, never the key."""
    return f"key:{_fingerprint(key)}"


class Authenticator:
    """Turns an ``Authorization`` header into a ``Principal`` or a 401."""

    def __init__(self, config: SandboxConfig, revoked: Callable[[Principal], bool]) -> None:
        self._secrets = {p.partner_id: p.secret.get_secret_value() for p in config.partners}
        self._static = [
            (key.get_secret_value(), p.partner_id) for p in config.partners for key in p.static_keys
        ]
        self._settings: AuthConfig = config.auth
        self._revoked = revoked
        self._cache: dict[str, Principal] = {}

    def authenticate(self, authorization: str | None) -> Principal:
        token = _bearer(authorization)
        principal = self._cache.get(token)
        if principal is None:
            principal = self._static_key(token) or self._verify_jwt(token)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[token] = principal
        leeway = self._settings.jwt_leeway_seconds
        if principal.expires_at is not None and principal.expires_at + leeway <= time.time():
            self._cache.pop(token, None)
            raise ApiError(401, "token expired")
        if self._revoked(principal):
            raise ApiError(401, "credential revoked")
        return principal

    def _static_key(self, token: str) -> Principal | None:
        for key, partner_id in self._static:
            if hmac.compare_digest(key.encode(), token.encode()):
                return Principal(partner_id, "static_key", key_credential(key))
        return None

    def _verify_jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise ApiError(401, "bearer token is neither a known key nor a JWT") from None
        if header.get("alg") != "HS256":
            raise ApiError(401, "token must be signed with HS256")
        partner_id = unverified.get("partnerId")
        secret = self._secrets.get(partner_id) if isinstance(partner_id, str) else None
        if secret is None or not isinstance(partner_id, str):
            raise ApiError(401, "token names no known partnerId")
        claims = _decode(token, secret, self._settings.jwt_leeway_seconds)
        credential = f"jwt:{partner_id}:{_fingerprint(token)}"
        expires_at = float(claims["exp"])
        if claims.get("type") == "partner":
            return Principal(partner_id, "partner_jwt", credential, expires_at=expires_at)
        if self._settings.accept_tenant_tokens and all(
            isinstance(claims.get(c), str) and claims[c] for c in _TENANT_CLAIMS
        ):
            return Principal(
                partner_id, "tenant_jwt", credential, claims["tenantExternalId"], expires_at
            )
        raise ApiError(
            401,
            'token must be partner-scoped (type "partner") or tenant-scoped '
            "(email, name, externalId, tenantExternalId)",
        )


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise ApiError(401, "missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Authorization must be 'Bearer <token>'")
    return token.strip()


def _decode(token: str, secret: str, leeway: float) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp", "iat", "partnerId"]},
            leeway=leeway,
        )
    except jwt.ExpiredSignatureError:
        raise ApiError(401, "token expired") from None
    except jwt.ImmatureSignatureError:
        raise ApiError(401, "token issued in the future (iat)") from None
    except jwt.InvalidSignatureError:
        raise ApiError(401, "token signature does not verify") from None
    except jwt.InvalidTokenError as exc:
        raise ApiError(401, f"invalid token: {exc}") from None
    return claims


def resolve_tenant(
    principal: Principal, headers: Mapping[str, str], registry: Registry, settings: AuthConfig
) -> Tenant:
    """The tenant an ``/api/*`` call acts for: from the token, or from ``reach-tenant-id``."""
    value = headers.get("reach-tenant-id")
    if value is None and settings.accept_x_tenant_id:
        value = headers.get("x-tenant-id")
    if principal.kind == "tenant_jwt":
        ext = principal.tenant_external_id or ""
        tenant = registry.tenant_for(principal.partner_id, ext, "external_id")
        if tenant is None or (value is not None and value not in (tenant.id, tenant.external_id)):
            raise ApiError(403, "the token's tenant is not accessible")
        return tenant
    if not value:
        raise ApiError(400, "reach-tenant-id header is required with a partner token")
    tenant = registry.tenant_for(principal.partner_id, value, settings.tenant_header_value)
    if tenant is None:
        raise ApiError(403, f"tenant {value!r} is not accessible with this credential")
    return tenant
