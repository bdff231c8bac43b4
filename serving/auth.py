"""Customer authentication of the chat: which customer a request comes from (`AuthConfig`).

`mode: verify`: the agent verifies the bearer JWT itself: an RS256 or ES256 signature by a key
of the issuer's JSON Web Key Set (from a URL, cached and refetched when a token names an unknown
`kid`, or from a mounted Secret file, reread then), the issuer, one of the audiences, and the
expiry with a little leeway. `mode: istio`: Istio has verified the token at the edge and put the
customer-id claim in `AuthConfig.customer_header` (its AuthorizationPolicy refuses that header
without a verified token), so it is taken as it is.

Every refusal is an `AuthError`: HTTP 401, a short machine-readable `reason`, and a
`www_authenticate` value for the response header. Nothing of the token is echoed back.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import jwt

from .config import AuthConfig

# Asymmetric only: an HMAC or `none` token must never verify against a public key set.
ALGORITHMS = {"RS256": "RSA", "ES256": "EC"}
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
# A cached key set is refetched after this long, so a key the issuer withdrew stops verifying.
JWKS_MAX_AGE_SECONDS = 300.0
# Fewest seconds between two fetches for unknown key ids: tokens with made-up `kid`s must not
# turn the agent into a load generator against the identity provider.
JWKS_MIN_REFRESH_SECONDS = 10.0


class AuthError(Exception):
    """A request the chat refuses: `status` 401, `reason` one of `missing_token`,
    `malformed_token`, `unsupported_algorithm`, `unknown_key`, `bad_signature`, `expired`,
    `not_yet_valid`, `wrong_issuer`, `wrong_audience`, `missing_claim`, `keys_unavailable`."""

    status = 401

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def www_authenticate(self) -> str:
        """The `WWW-Authenticate` header of the 401 (RFC 6750)."""
        if self.reason == "missing_token":
            return 'Bearer realm="switchboard"'
        return (
            f'Bearer realm="switchboard", error="invalid_token", error_description="{self.message}"'
        )

    def to_json(self) -> dict[str, Any]:
        return {"error": "unauthorized", "reason": self.reason, "detail": self.message}


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header."""
    if not authorization or not authorization.strip():
        raise AuthError("missing_token", "an Authorization: Bearer token is required")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed_token", "the Authorization header is not a Bearer token")
    return token.strip()


def _fetch_url(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=JWKS_FETCH_TIMEOUT_SECONDS) as response:
        body: bytes = response.read()
        return body


class KeySet:
    """The issuer's public keys by `kid`, loaded from a URL or a file, refreshed when stale or
    when a token names a key id not in it (at most once per `min_refresh_seconds` for a URL)."""

    def __init__(
        self,
        *,
        uri: str | None = None,
        path: str | None = None,
        max_age_seconds: float = JWKS_MAX_AGE_SECONDS,
        min_refresh_seconds: float = JWKS_MIN_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[str], bytes] = _fetch_url,
    ) -> None:
        if (uri is None) == (path is None):
            raise ValueError("a key set needs exactly one of uri and path")
        self.uri = uri
        self.path = path
        self.max_age_seconds = max_age_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self._clock = clock
        self._fetch = fetch
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at: float | None = None
        self._tried_at: float | None = None
        self.loads = 0
        """Key set documents read so far (tests and metrics)."""

    def _read(self) -> bytes:
        if self.uri is not None:
            return self._fetch(self.uri)
        assert self.path is not None
        with open(self.path, "rb") as file:
            return file.read()

    def _load(self) -> None:
        """Replace the keys with the source's; on failure keep the old ones (and say so only
        when there are none)."""
        self._tried_at = self._clock()
        try:
            document = json.loads(self._read())
            entries = document["keys"]
            if not isinstance(entries, list):
                raise TypeError("keys is not a list")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if not self._keys:
                raise AuthError("keys_unavailable", "the issuer's keys cannot be read") from exc
            return
        keys: dict[str, jwt.PyJWK] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if entry.get("kty") not in ALGORITHMS.values():
                continue
            try:
                keys[str(entry.get("kid", ""))] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # one unusable key does not take the others down
        self._keys = keys
        self._loaded_at = self._tried_at
        self.loads += 1

    def key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            now = self._clock()
            stale = self._loaded_at is None or now - self._loaded_at >= self.max_age_seconds
            if stale:
                self._load()
            if kid not in self._keys:
                recently = (
                    self._tried_at is not None
                    and now - self._tried_at < self.min_refresh_seconds
                    and self.uri is not None
                )
                if not stale and not recently:
                    self._load()
            found = self._keys.get(kid)
        if found is None:
            raise AuthError("unknown_key", "the token is signed by a key the issuer does not list")
        return found


class Authenticator:
    """Finds the customer of a request as `AuthConfig` says (see the module docstring)."""

    def __init__(self, config: AuthConfig, keys: KeySet | None = None) -> None:
        self.config = config
        if keys is None and config.mode == "verify":
            keys = KeySet(uri=config.jwks_uri, path=config.jwks_path)
        self.keys = keys

    def verify(self, authorization: str | None) -> str:
        """The customer id of a valid `Authorization: Bearer <JWT>` header value, else
        `AuthError`. May block on a key-set fetch (a cold cache or an unknown `kid`): from async
        code call `verify_async`."""
        token = bearer_token(authorization)
        if self.keys is None:
            raise AuthError("keys_unavailable", "this agent verifies no tokens itself")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed_token", "the token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise AuthError("unsupported_algorithm", "the token must be signed with RS256 or ES256")
        key = self.keys.key(str(header.get("kid", "")))
        if key.key_type != ALGORITHMS[algorithm] or key.algorithm_name != algorithm:
            raise AuthError("bad_signature", "the token's algorithm does not match its key")
        claim = self.config.customer_id_claim
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=list(self.config.audiences),
                issuer=self.config.issuer,
                leeway=self.config.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("not_yet_valid", "the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong_issuer", "the token is from another issuer") from None
        except jwt.InvalidAudienceError:
            raise AuthError("wrong_audience", "the token is for another audience") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature", "the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("missing_claim", f"the token has no {exc.claim} claim") from None
        except jwt.PyJWTError:
            raise AuthError("malformed_token", "the token is not a valid JWT") from None
        customer = claims.get(claim)
        if not isinstance(customer, str | int) or isinstance(customer, bool) or customer == "":
            raise AuthError("missing_claim", f"the token has no {claim} claim")
        return str(customer)

    async def verify_async(self, authorization: str | None) -> str:
        """`verify` in a worker thread, so a key-set fetch never blocks the event loop."""
        return await asyncio.to_thread(self.verify, authorization)

    def customer(self, headers: Mapping[str, str]) -> str | None:
        """The customer id of a request by its headers, as the mode says; None for an anonymous
        request when auth is not required. `AuthError` when refused. May block like `verify`."""
        if self.config.mode == "istio":
            customer = _header(headers, self.config.customer_header)
            if customer:
                return customer
            if self.config.required:
                raise AuthError("missing_token", "an Authorization: Bearer token is required")
            return None
        authorization = _header(headers, "authorization")
        if not authorization and not self.config.required:
            return None
        return self.verify(authorization)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value
