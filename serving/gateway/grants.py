"""Which operations each agent may call: the grants table the caller check reads.

On a cluster the operator keeps the table in a ConfigMap the gateway mounts
(`ToolGatewayConfig.grants_file`), so agents coming and going change a file, not the Deployment:
no rollout, no readiness flap. The kubelet syncs a changed ConfigMap into the pod within about a
minute; the next call after that reads the new file (`mounted.MountedValue`). Locally and in
tests the table is inline (`ToolGatewayConfig.grants`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from ..config import GatewayGrants, ToolGatewayConfig
from .logs import LOGGER_NAME
from .mounted import MountedValue

GrantTable = Mapping[str, frozenset[str]]
"""Agent → the operations it is granted."""


class Grants(Protocol):
    def table(self) -> GrantTable | None:
        """The current table; None when there is none to go by (every call is then refused)."""
        ...

    def problem(self) -> str | None:
        """Why there is no table, or None (for /readyz)."""
        ...


def grant_table(grants: Mapping[str, Iterable[str]]) -> GrantTable:
    return {agent: frozenset(ops) for agent, ops in grants.items()}


class FixedGrants:
    """A table given inline."""

    def __init__(self, grants: Mapping[str, Iterable[str]]) -> None:
        self._table = grant_table(grants)

    def table(self) -> GrantTable | None:
        return self._table

    def problem(self) -> str | None:
        return None


class GrantsInvalid(Exception):
    """The grants file cannot be used; the message says why (no file content)."""


class GrantsFile:
    """The table in a mounted `GatewayGrants` file, re-read when the file changes.

    Fail closed, but not brittle: a file that turns unreadable or invalid (someone's hand edit
    of the ConfigMap) leaves the last good table in force, the operator's last word; without
    one, there is no table and every call is refused. Each new problem is logged once (a broken
    file would otherwise log on every call)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mounted = MountedValue([path], self._load)
        self._last_good: GrantTable | None = None
        self._problem: str | None = None
        self._log = logging.getLogger(LOGGER_NAME)

    def table(self) -> GrantTable | None:
        try:
            loaded = self._mounted.get()
        except OSError as exc:
            loaded = GrantsInvalid(f"grants file {self.path} cannot be read ({exc.strerror})")
        if isinstance(loaded, GrantsInvalid):
            self._report(str(loaded))
            return self._last_good
        if self._problem is not None:
            self._log.info("grants file readable again", extra={"fields": {"event": "grants"}})
            self._problem = None
        self._last_good = loaded
        return loaded

    def problem(self) -> str | None:
        return self._problem if self.table() is None else None

    def _load(self) -> GrantTable | GrantsInvalid:
        """Parsed once per version of the file: an invalid one is kept as its problem, so that a
        broken file is not parsed again on every call."""
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            return GrantsInvalid(f"grants file {self.path} cannot be read ({exc.strerror})")
        try:
            return grant_table(GatewayGrants.model_validate_json(raw).grants)
        except ValidationError as exc:
            where = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                for err in exc.errors(include_url=False)[:3]
            )
            return GrantsInvalid(f"grants file {self.path} is not valid: {where}")

    def _report(self, problem: str) -> None:
        if problem == self._problem:
            return
        self._problem = problem
        kept = "keeping the last good grants" if self._last_good is not None else "no grants"
        self._log.warning(
            f"{problem}; {kept}",
            extra={"fields": {"event": "grants", "kept_last_good": self._last_good is not None}},
        )


def grants_of(config: ToolGatewayConfig) -> Grants:
    """The gateway's grants: its mounted file if it has one, else the inline table."""
    if config.grants_file:
        return GrantsFile(Path(config.grants_file))
    return FixedGrants(config.grants)
