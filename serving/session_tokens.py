"""Conversations bound to whoever started them: a signed session token.

Without it a session id alone continued someone else's conversation and read its human
messages. The agent now answers a session's first turn with a token (HMAC-SHA256 over the
session id and an expiry, keyed by a Secret the agent's replicas share), and every later turn
and every read of the session must carry it (`X-Session-Token`, or `?token=` where a browser's
EventSource cannot set headers). A fresh token comes with every answer, so an active
conversation never runs into the expiry.

Keys are the files of a mounted Secret (key id = file name). Tokens are signed with the key
whose name sorts last and checked with any key present: to rotate, add a key named after the
current one (`k2` beside `k1`), wait for the kubelet to update the mount, then remove the old.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from .http import Refused

log = logging.getLogger("switchboard.session_tokens")

TOKEN_HEADER = "x-session-token"
TOKEN_QUERY = "token"
TOKEN_SECONDS = 7 * 86400
KEYS_RECHECK_SECONDS = 10.0
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class SessionRefused(Refused):
    """A request for an existing conversation without its valid token: 401 (none sent) or 403
    (wrong, expired, or for another session). The message never describes the session."""


class SessionTokens:
    """Issues and checks session tokens with the keys of a folder (a mounted Secret), re-read
    every few seconds so a rotation needs no restart."""

    def __init__(
        self,
        keys_dir: str,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys_dir = Path(keys_dir)
        self.clock = clock
        self.monotonic = monotonic
        self._keys: dict[str, bytes] = {}
        self._read_at: float | None = None

    def _current(self) -> dict[str, bytes]:
        now = self.monotonic()
        if self._read_at is None or now - self._read_at >= KEYS_RECHECK_SECONDS:
            self._read_at = now
            keys: dict[str, bytes] = {}
            try:
                for path in sorted(self.keys_dir.iterdir()):
                    # The kubelet's `..data` links and hidden files are not keys.
                    if not _KEY_ID.match(path.name) or path.name.startswith("."):
                        continue
                    if path.is_file() and (value := path.read_bytes().strip()):
                        keys[path.name] = value
            except OSError as exc:
                log.warning("session token keys: cannot read %s: %s", self.keys_dir, exc)
            if keys or not self._keys:
                self._keys = keys  # an unreadable mount keeps the keys it had
        return self._keys

    def issue(self, session_id: str) -> str:
        keys = self._current()
        if not keys:
            raise RuntimeError(f"no session token keys in {self.keys_dir}")
        key_id = max(keys)
        expires = int(self.clock()) + TOKEN_SECONDS
        return f"v1.{key_id}.{expires}.{_sign(keys[key_id], session_id, expires)}"

    def check(self, session_id: str, token: str | None) -> None:
        """Raises `SessionRefused` unless `token` was issued for `session_id` and is current."""
        if not token:
            raise SessionRefused(
                401, "session_token_required", "this conversation needs its session token"
            )
        refused = SessionRefused(
            403, "session_token_invalid", "the session token does not match this conversation"
        )
        version, _, rest = token.partition(".")
        key_id, _, rest = rest.partition(".")
        expires_text, _, signature = rest.partition(".")
        if version != "v1" or not expires_text.isdigit() or len(expires_text) > 12:
            raise refused
        key = self._current().get(key_id)
        if key is None or int(expires_text) < self.clock():
            raise refused
        expected = _sign(key, session_id, int(expires_text))
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise refused


def _sign(key: bytes, session_id: str, expires: int) -> str:
    digest = hmac.new(key, f"{session_id}\0{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
