"""Container images: build time cold and warm, image sizes, and time from container start to
the first answer. Prints one JSON document (progress on stderr).

- cold: `images/build.sh` into an empty container storage (a temporary SWITCHBOARD_CONTAINERS):
  the base rootfs from mmdebstrap, every dependency downloaded and installed;
- warm: the same command again, as after a code change: the project's wheel is rebuilt and
  reinstalled, the base and the dependency layers come from the cache;
- starts: the image tests (tests/test_images.py) run against those images and record the seconds
  from `podman run` to the operator's health endpoint, the gateway's first call and the
  runtime's first chat turn answered (its NLU model fetched from S3 and verified on the way).

    .venv/bin/python -P benchmarks/images.py [--storage DIR] [--skip-cold] [--json-out FILE]

`--skip-cold` measures warm builds and starts with the usual storage (~/.cache/switchboard/
containers). Needs what `make images` and the envtest tests need.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The helpers the test suite uses (tests/support): tests/ goes on the path, never the repository
# root, whose operator/ would shadow the stdlib module (hence `python -P` too).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.paths import REPO_ROOT as REPO
from support.report import emit, run_facts

DEFAULT_STORAGE = Path.home() / ".cache" / "switchboard" / "containers"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build(storage: Path) -> dict[str, Any]:
    """One `images/build.sh` run: its wall time and the per-image lines it prints."""
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(REPO / "images" / "build.sh")],
        cwd=REPO,
        env={**os.environ, "SWITCHBOARD_CONTAINERS": str(storage), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"images/build.sh failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    return {
        "wall_seconds": round(time.monotonic() - started, 1),
        "images": [x for x in lines if "image" in x],
    }


def starts(storage: Path) -> list[dict[str, Any]]:
    """The image tests' start-up timings (they assert behaviour, not speed)."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as timings:
        env = {
            **os.environ,
            "SWITCHBOARD_CONTAINERS": str(storage),
            "SWITCHBOARD_IMAGE_TIMINGS": timings.name,
        }
        done = subprocess.run(
            [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/test_images.py", "-k", "ready or serves"],
            cwd=REPO, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"image tests failed:\n{done.stdout[-4000:]}")
        return [json.loads(line) for line in Path(timings.name).read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, help="container storage for the cold build")
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    result: dict[str, Any] = run_facts()
    scratch = None
    if args.skip_cold:
        storage = DEFAULT_STORAGE
    else:
        scratch = Path(tempfile.mkdtemp(prefix="switchboard-images-"))
        storage = args.storage or scratch
        log(f"cold build into {storage} ...")
        result["cold"] = build(storage)
    try:
        log("warm build ...")
        result["warm"] = build(storage)
        result["sizes_mb"] = {
            Path(x["image"]).name: round(x["size_bytes"] / 1e6, 1) for x in result["warm"]["images"]
        }
        log("start-up (tests/test_images.py) ...")
        result["starts"] = starts(storage)
    finally:
        if scratch is not None:
            # The storage's overlay layers belong to root and may be mounted: podman removes them.
            subprocess.run(
                ["bash", str(REPO / "images" / "podman.sh"), "podman", "system", "reset", "-f"],
                env={**os.environ, "SWITCHBOARD_CONTAINERS": str(storage)},
                capture_output=True,
                check=False,
            )
            shutil.rmtree(scratch, ignore_errors=True)
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
