"""The customer chat widget and the agent console: dependency-free pages (HTML, vanilla JS and
CSS, no build step, no network beyond the agent's own API) that the agent serves at `/widget`
and `/console` (docs/handoffs.md, "Pages").

`page(name)` answers one page as a single HTML document: the sibling stylesheets and scripts it
links (`<link rel="stylesheet" href="X.css">`, `<script src="X.js"></script>`) are inlined, so
the page needs no other route and works the same from the agent and from the router.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

PAGES = ("widget", "console")

_LINKED = re.compile(
    r'<link rel="stylesheet" href="(?P<css>[a-z0-9_-]+\.css)">'
    r'|<script src="(?P<js>[a-z0-9_-]+\.js)"></script>'
)


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _inline(match: re.Match[str]) -> str:
    if match["css"]:
        return f"<style>\n{_read(match['css'])}</style>"
    # A script may not contain "</script": none of ours does (checked by the tests).
    return f"<script>\n{_read(match['js'])}</script>"


@functools.cache
def page(name: str) -> str:
    """The page `name` (`widget` or `console`, with or without `.html`) with its stylesheets and
    scripts inlined. Raises `KeyError` for any other name."""
    stem = name.removesuffix(".html")
    if stem not in PAGES:
        raise KeyError(name)
    return _LINKED.sub(_inline, _read(f"{stem}.html"))
