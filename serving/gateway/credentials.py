"""Upstream credentials from the adapter's Secret, mounted as files.

A rotation of the Secret is picked up on the next call, without a restart and without re-reading
unchanged files (`mounted.MountedValue`).

Nothing here ever puts a credential value into an exception or a log: reasons name files only.
"""

from __future__ import annotations

import base64
from pathlib import Path

from ..config import GatewayAuth
from .mounted import FileSignature, MountedValue, file_signature

# Secret keys each auth type reads (the ToolAdapter CRD documents the same keys).
AUTH_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "bearer": ("token",),
    "basic": ("username", "password"),
    "header": ("value",),
}


class CredentialsUnavailable(Exception):
    """The mounted credentials cannot be used; the message says which file and why."""


class Credentials:
    def __init__(self, auth: GatewayAuth) -> None:
        if auth.type == "header" and not auth.header_name:
            raise ValueError("auth type 'header' needs header_name")
        self.auth = auth
        self.header_name = auth.header_name or ""
        self.directory = Path(auth.credentials_dir)
        self.keys = AUTH_KEYS[auth.type]
        self._mounted = MountedValue([self._path(key) for key in self.keys], self._load, self._stat)

    def headers(self) -> dict[str, str]:
        """Headers that authenticate one upstream request; raises CredentialsUnavailable."""
        if not self.keys:
            return {}
        return self._mounted.get()

    def problem(self) -> str | None:
        """Why the credentials cannot be used, or None when they can (for /readyz)."""
        try:
            self.headers()
        except CredentialsUnavailable as exc:
            return str(exc)
        return None

    def _path(self, key: str) -> Path:
        return self.directory / key

    def _stat(self, path: Path) -> FileSignature:
        try:
            return file_signature(path)
        except FileNotFoundError:
            raise CredentialsUnavailable(f"credentials file {path} is missing") from None
        except OSError as exc:
            raise CredentialsUnavailable(
                f"credentials file {path} cannot be read ({exc.strerror})"
            ) from None

    def _load(self) -> dict[str, str]:
        return self._build({key: self._read(key) for key in self.keys})

    def _read(self, key: str) -> str:
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise CredentialsUnavailable(f"credentials file {path} is missing") from None
        except OSError as exc:
            raise CredentialsUnavailable(
                f"credentials file {path} cannot be read ({exc.strerror})"
            ) from None
        try:
            # Secrets made from files often end with a newline that is no part of the value.
            value = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise CredentialsUnavailable(f"credentials file {path} is not UTF-8") from None
        if not value:
            raise CredentialsUnavailable(f"credentials file {path} is empty")
        if any(ch in value for ch in "\r\n\0"):
            # Would split or corrupt the header it is sent in.
            raise CredentialsUnavailable(f"credentials file {path} contains a line break")
        return value

    def _build(self, values: dict[str, str]) -> dict[str, str]:
        match self.auth.type:
            case "bearer":
                return {"Authorization": f"Bearer {values['token']}"}
            case "basic":
                if ":" in values["username"]:
                    raise CredentialsUnavailable(
                        f"credentials file {self._path('username')} contains ':' "
                        "(not allowed in a basic-auth user name)"
                    )
                pair = f"{values['username']}:{values['password']}".encode()
                return {"Authorization": f"Basic {base64.b64encode(pair).decode('ascii')}"}
            case "header":
                return {self.header_name: values["value"]}
        return {}
