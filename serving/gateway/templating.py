"""From an operation's input to the upstream HTTP request: path templating and query/body split.

Pure functions: no I/O, so the encoding rules are table-tested on their own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class TemplateError(ValueError):
    """The configured path template is unusable (a configuration error)."""


class InputError(ValueError):
    """The caller's input cannot fill the request (answered with 400)."""


@dataclass(frozen=True)
class PathTemplate:
    """A path such as `/orders/{order_id}/refunds`; parsed once, at start."""

    template: str
    literals: tuple[str, ...]
    """Text around the placeholders: one more than `names`."""
    names: tuple[str, ...]
    """Placeholder names in order of appearance (repeats allowed)."""

    @classmethod
    def parse(cls, template: str) -> PathTemplate:
        if not template.startswith("/"):
            raise TemplateError(f"path {template!r} must start with '/'")
        parts = _PLACEHOLDER.split(template)
        literals, names = tuple(parts[0::2]), tuple(parts[1::2])
        for literal in literals:
            if "{" in literal or "}" in literal or "?" in literal or "#" in literal:
                raise TemplateError(
                    f"path {template!r} has an unbalanced brace or a query/fragment"
                )
        for name in names:
            if not _PARAM_NAME.match(name):
                raise TemplateError(f"path {template!r} has an invalid placeholder {{{name}}}")
        return cls(template, literals, names)

    @property
    def params(self) -> frozenset[str]:
        return frozenset(self.names)

    def render(self, values: Mapping[str, Any]) -> str:
        """The path with every placeholder replaced by its percent-encoded value."""
        out = [self.literals[0]]
        for name, literal in zip(self.names, self.literals[1:], strict=True):
            if name not in values:
                raise InputError(f"missing path parameter '{name}'")
            out.append(_path_segment(name, values[name]))
            out.append(literal)
        return "".join(out)


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _path_segment(name: str, value: Any) -> str:
    text = _scalar(value)
    if text is None:
        raise InputError(f"path parameter '{name}' must be a string, number or boolean")
    # Empty, "." and ".." would change which resource the path names (`/orders/..`): refused
    # rather than encoded, since servers differ on whether they decode %2E before resolving.
    if text in {"", ".", ".."}:
        raise InputError(f"path parameter '{name}' must not be empty, '.' or '..'")
    # safe="": a "/" in a value stays inside its segment (%2F) instead of adding one.
    return quote(text, safe="")


def query_pairs(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Query parameters from input: scalars as text (booleans `true`/`false`), lists as repeated
    keys, objects (and objects inside lists) as compact JSON; None is left out."""
    pairs: list[tuple[str, str]] = []
    for key, value in values.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item is None:
                continue
            text = _scalar(item)
            if text is None:
                text = json.dumps(item, separators=(",", ":"), ensure_ascii=False)
            pairs.append((key, text))
    return pairs


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    url: str
    """Fully percent-encoded: sent as is."""
    body: dict[str, Any] | None
    """JSON body (POST, PUT, PATCH), else None."""


def build_request(
    base_url: str, method: str, template: PathTemplate, payload: Mapping[str, Any]
) -> UpstreamRequest:
    """Placeholders are filled from the input; the rest of it becomes the query string of a GET
    or DELETE, or the JSON body of a POST, PUT or PATCH."""
    path = template.render(payload)
    rest = {key: value for key, value in payload.items() if key not in template.params}
    url = base_url.rstrip("/") + path
    if method in BODY_METHODS:
        return UpstreamRequest(method, url, rest)
    query = urlencode(query_pairs(rest), quote_via=quote, safe="")
    return UpstreamRequest(method, f"{url}?{query}" if query else url, None)
