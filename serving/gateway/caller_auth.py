"""Which agent calls, and may it: the caller's projected ServiceAccount token, verified with a
TokenReview against the API server, mapped to a SupportAgent and checked against the grants the
operator keeps for the gateway (`grants.py`). See docs/tool-gateway.md.

Plain stdlib HTTPS (the gateway image carries no Kubernetes client); the review runs in a thread
so the event loop keeps serving, and its result is cached per token hash until shortly before
the token expires, so an agent's calls cost one review per token (every ~8 minutes).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import AGENT_TOKEN_AUDIENCE
from .grants import FixedGrants, Grants

IN_CLUSTER_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
REVIEW_TIMEOUT_SECONDS = 5.0
# A result is trusted until this long before the token expires (and never longer than the
# fallback when the token's expiry cannot be read).
EXPIRY_MARGIN_SECONDS = 30.0
FALLBACK_CACHE_SECONDS = 60.0
NEGATIVE_CACHE_SECONDS = 10.0
MAX_CACHE_ENTRIES = 4096
MAX_TOKEN_LENGTH = 16 * 1024
RAY_SA_SUFFIX = "-ray"


class ReviewUnavailable(Exception):
    """The API server could not be asked (unreachable, refused our own credentials, ...)."""


@dataclass(frozen=True)
class Caller:
    """A verified caller: the SupportAgent whose Ray pods hold the token."""

    agent: str
    username: str


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    reason: str
    """The `reason` label of `tool_gateway_caller_refusals_total`."""
    agent: str | None = None


def agent_of(username: str, namespace: str) -> str | None:
    """`system:serviceaccount:<namespace>:<agent>-ray` → `<agent>`; anything else → None."""
    prefix = f"system:serviceaccount:{namespace}:"
    if not username.startswith(prefix):
        return None
    account = username[len(prefix) :]
    if not account.endswith(RAY_SA_SUFFIX) or len(account) <= len(RAY_SA_SUFFIX):
        return None
    return account[: -len(RAY_SA_SUFFIX)]


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, unverified (only to bound how long a review is cached)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None
    except (IndexError, ValueError, AttributeError):
        return None


class TokenReviewer:
    """POSTs TokenReviews to the API server with the gateway's own ServiceAccount token."""

    def __init__(
        self,
        server: str,
        token_file: str,
        ca_file: str | None,
        audience: str = AGENT_TOKEN_AUDIENCE,
        timeout: float = REVIEW_TIMEOUT_SECONDS,
    ) -> None:
        self.url = server.rstrip("/") + REVIEW_PATH
        self.token_file = token_file
        self.audience = audience
        self.timeout = timeout
        handlers: list[urllib.request.BaseHandler] = [
            # No proxy from the environment: the API server is asked directly, as the upstream.
            urllib.request.ProxyHandler({}),
        ]
        if ca_file:
            context = ssl.create_default_context(cafile=ca_file)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    @classmethod
    def in_cluster(cls, environ: Mapping[str, str]) -> TokenReviewer:
        host = environ.get("KUBERNETES_SERVICE_HOST", "")
        port = environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ReviewUnavailable("KUBERNETES_SERVICE_HOST is not set (not in a cluster?)")
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", f"{IN_CLUSTER_DIR}/token", f"{IN_CLUSTER_DIR}/ca.crt")

    def review(self, token: str) -> dict[str, Any]:
        """The TokenReview's `status` (blocking)."""
        try:
            # Re-read per review: the kubelet rotates the projected token.
            own = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise ReviewUnavailable(f"cannot read the gateway's token: {exc.strerror}") from None
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {own}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise ReviewUnavailable(f"TokenReview answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ReviewUnavailable(f"TokenReview failed: {type(exc).__name__}") from None
        status = answer.get("status") if isinstance(answer, dict) else None
        return status if isinstance(status, dict) else {}


Review = Callable[[str], dict[str, Any]]


class CallerAuth:
    """Verifies a caller's token (cached) and checks the agent's grants."""

    def __init__(
        self,
        namespace: str,
        grants: Grants | Mapping[str, Iterable[str]],
        review: Review,
        audience: str = AGENT_TOKEN_AUDIENCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`grants`: where the current table comes from, or a fixed table."""
        self.namespace = namespace
        self.grants: Grants = FixedGrants(grants) if isinstance(grants, Mapping) else grants
        self.audience = audience
        self._review = review
        self._clock = clock
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._pending: dict[str, asyncio.Future[Caller | None]] = {}

    async def check(self, token: str | None, operation: str) -> Caller | Refusal:
        if not token:
            return Refusal(401, "unauthenticated", "no agent token", "missing_token")
        if len(token) > MAX_TOKEN_LENGTH:
            return Refusal(401, "unauthenticated", "agent token is not valid", "invalid_token")
        try:
            caller = await self._verify(token)
        except ReviewUnavailable as exc:
            return Refusal(
                503, "caller_check_unavailable", f"cannot verify the caller: {exc}", "unavailable"
            )
        if caller is None:
            return Refusal(401, "unauthenticated", "agent token is not valid", "invalid_token")
        table = self.grants.table()
        if table is None:
            # 503, not 403: the gateway cannot tell whether the agent is granted, and a 403
            # would tell it (and its customer) "never" for what is the gateway's own fault.
            # Refused all the same (fail closed); the agent retries as for any outage.
            return Refusal(
                503,
                "grants_unavailable",
                f"cannot check the caller's grants: {self.grants.problem()}",
                "unavailable",
                caller.agent,
            )
        if operation not in table.get(caller.agent, frozenset()):
            return Refusal(
                403,
                "not_granted",
                f"agent {caller.agent!r} is not granted operation {operation[:64]!r}",
                "not_granted",
                caller.agent,
            )
        return caller

    async def _verify(self, token: str) -> Caller | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._pending.get(key)
        if pending is not None:
            # Concurrent calls with one new token share one review.
            return await asyncio.shield(pending)
        future: asyncio.Future[Caller | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            status = await asyncio.to_thread(self._review, token)
            caller = self._caller(status)
            self._remember(key, token, caller)
            future.set_result(caller)
            return caller
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            del self._pending[key]

    def _caller(self, status: Mapping[str, Any]) -> Caller | None:
        if status.get("authenticated") is not True:
            return None
        audiences = status.get("audiences")
        # An API server that ignores audiences answers none: the token was not checked for ours.
        if not isinstance(audiences, list) or self.audience not in audiences:
            return None
        user = status.get("user") or {}
        username = str(user.get("username", "")) if isinstance(user, dict) else ""
        agent = agent_of(username, self.namespace)
        return None if agent is None else Caller(agent, username)

    def _remember(self, key: str, token: str, caller: Caller | None) -> None:
        now = self._clock()
        if caller is None:
            until = now + NEGATIVE_CACHE_SECONDS
        else:
            exp = token_expiry(token)
            limit = now + FALLBACK_CACHE_SECONDS if exp is None else exp - EXPIRY_MARGIN_SECONDS
            until = min(limit, now + 600.0)
        if until <= now:
            return
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            for stale in [k for k, (t, _) in self._cache.items() if t <= now]:
                del self._cache[stale]
            if len(self._cache) >= MAX_CACHE_ENTRIES:
                self._cache.clear()
        self._cache[key] = (until, caller)
