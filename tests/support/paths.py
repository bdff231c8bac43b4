"""Where the repository's folders are, and the shared data folder beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
QUICKSTART = EXAMPLES / "quickstart"
CRDS_DIR = REPO_ROOT / "crds"
CHART_DIR = REPO_ROOT / "charts" / "switchboard"
ENVTEST_SCRIPTS = REPO_ROOT / "tests" / "envtest"

# The project's shared data folder (``../shared`` beside the checkout, locally and in CI);
# ``SWITCHBOARD_SHARED_DIR`` points elsewhere.
SHARED_DIR = Path(os.environ.get("SWITCHBOARD_SHARED_DIR") or REPO_ROOT.parent / "shared")
UPSTREAM_CRDS = SHARED_DIR / "schemas" / "crds"
