"""Credentials for Reach: a partner-scoped HS256 JWT minted locally, or a static bearer key.

docs/reach-api.md §2.1 and §7 Q1: the server side uses a partner-scoped token (``partnerId``,
``type: "partner"``) with the tenant in a header. The docs list no ``iat``/``exp`` for it; both
are sent anyway so a leaked token dies on its own. Minting is an HMAC over a few bytes, but it
happens on every request path, so the token is cached and replaced before it gets close to
expiry: a token that expires in flight would surface as a 401, which the engine treats as a
configuration error and stops the tenant for.

The token is signed with the standard library (``hs256_token``): PyJWT imports cryptography's
native modules whenever they are installed, 9 MiB of every ``run`` process's memory for an
HMAC that ``hmac`` does. Tests check the tokens against PyJWT, byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from consumer.config import Auth
from consumer.errors import ConfigurationError

__all__ = ["Clock", "Credential", "PartnerJwt", "StaticKey", "credential_for", "hs256_token"]

Clock = Callable[[], float]

# Replace a token once less than this share of its lifetime is left: with the default hour that
# is six minutes of margin for clock skew between us and Reach and for slow requests.
_REFRESH_WHEN_LEFT = 0.10


class Credential(Protocol):
    """What the client needs from a credential: the bearer value, and a way to drop it."""

    def bearer(self) -> str:
        """The token to send now."""
        ...

    def invalidate(self) -> None:
        """Forget any cached token, after Reach refused it (the next call mints afresh)."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """Every secret string this credential has handed out, for redaction."""
        ...


class StaticKey:
    """A bearer key issued by Reach (§7 Q1 keeps this option in case Reach issues keys)."""

    def __init__(self, key: str) -> None:
        self._key = key

    def bearer(self) -> str:
        return self._key

    def invalidate(self) -> None:
        """A static key cannot be renewed; a refusal stays a configuration error."""

    def secrets(self) -> tuple[str, ...]:
        return (self._key,)

    def __repr__(self) -> str:
        return "StaticKey(***)"


class PartnerJwt:
    """A partner-scoped token, cached until less than 10% of its lifetime is left."""

    def __init__(self, partner_id: str, secret: str, ttl_s: int, clock: Clock = time.time) -> None:
        self._partner_id = partner_id
        self._secret = secret
        self._ttl_s = ttl_s
        self._clock = clock
        self._token: str | None = None
        # The last token sent stays known after ``invalidate``: a refusal quoting it is redacted.
        self._last_sent: str | None = None
        self._issued_at = 0
        self._refresh_at = 0.0

    def bearer(self) -> str:
        now = self._clock()
        # A clock that went backwards past the issue time also gets a new token: Reach would
        # refuse one whose ``iat`` lies in its future.
        if self._token is None or not self._issued_at <= now < self._refresh_at:
            self._token = self._last_sent = self._mint(int(now))
        return self._token

    def invalidate(self) -> None:
        self._token = None

    def secrets(self) -> tuple[str, ...]:
        return (self._secret,) if self._last_sent is None else (self._secret, self._last_sent)

    def _mint(self, issued_at: int) -> str:
        claims: dict[str, str | int] = {
            "partnerId": self._partner_id,
            "type": "partner",
            "iat": issued_at,
            "exp": issued_at + self._ttl_s,
        }
        self._issued_at = issued_at
        self._refresh_at = issued_at + self._ttl_s * (1.0 - _REFRESH_WHEN_LEFT)
        return hs256_token(claims, self._secret)

    def __repr__(self) -> str:
        return f"PartnerJwt(partner_id={self._partner_id!r}, ttl_s={self._ttl_s})"


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# RFC 7515's JOSE header, as PyJWT writes it (sorted keys, no spaces).
_HS256_HEADER = _base64url(b'{"alg":"HS256","typ":"JWT"}')


def hs256_token(claims: Mapping[str, str | int], secret: str) -> str:
    """A compact JWT (RFC 7519) of ``claims``, signed with HMAC-SHA256 (RFC 7515 §A.1)."""
    payload = _base64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{_HS256_HEADER}.{payload}"
    digest = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_base64url(digest)}"


def credential_for(auth: Auth, clock: Clock = time.time) -> Credential:
    """The credential the destination's ``auth`` section describes."""
    if auth.secret is None:  # the config model refuses this; kept for the type checker
        raise ConfigurationError("destination.auth has no secret", scope="credential")
    secret = auth.secret.get_secret_value()
    if auth.mode == "static":
        return StaticKey(secret)
    if not auth.partner_id:
        raise ConfigurationError("destination.auth mode jwt needs partner_id", scope="credential")
    return PartnerJwt(auth.partner_id, secret, auth.token_ttl_s, clock)
