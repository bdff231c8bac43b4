"""Write each image's dependency list (`python -P images/requirements.py DIR`): the project's
own dependencies plus those of one extra, read from pyproject.toml. The Containerfiles install
these in a layer of their own, before the project's wheel, so that layer is rebuilt only when
the dependencies change."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
EXTRAS = ("operator", "gateway", "serving")


def requirements(extra: str) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = list(project["dependencies"]) + list(project["optional-dependencies"][extra])
    own = project["name"]
    if any(req.startswith(f"{own}[") for req in wanted):
        raise SystemExit(f"extra {extra!r} refers to {own} itself: list its dependencies instead")
    return wanted


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for extra in EXTRAS:
        (folder / f"{extra}.txt").write_text("\n".join(requirements(extra)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
