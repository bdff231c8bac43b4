"""The demo NLU model: ``switchboard nlu train`` on the demo e-commerce intents."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .errors import SetupError
from .paths import EXAMPLES

DEMO_INTENTS = EXAMPLES / "nlu" / "ecommerce-intents.csv"
TRAIN_TIMEOUT_S = 900


def train_demo_nlu_model(out: Path) -> Path:
    """Train a real fine-tuned, int8 model into ``out`` (1-2 minutes on 2 cores); return it."""
    trained = subprocess.run(
        [sys.executable, "-m", "switchboard.operator.cli", "nlu", "train", "--data",
         str(DEMO_INTENTS), "--out", str(out), "--quiet"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S,
        check=False,
    )  # fmt: skip
    if trained.returncode != 0:
        raise SetupError(f"training the demo NLU model failed:\n{trained.stderr[-3000:]}")
    return out
