"""What the operator can learn about a model artifact from where it runs.

An NLU artifact's manifest names its labels; the agent's plans are checked against them. The
operator reads a manifest only where its own filesystem reaches the artifact (`file://` paths,
as in local runs and for models mounted into the operator); elsewhere the label set is unknown
and the check says so instead of guessing.
"""

from __future__ import annotations

import json
from pathlib import Path

from switchboard.serving.config import NLU_MANIFEST


class ModelUnreadable(Exception):
    """The manifest cannot be read from here; the message says why."""


def model_labels(uri: str) -> list[str]:
    """The labels in the manifest of the NLU artifact at `uri`."""
    if not uri.startswith("file://"):
        raise ModelUnreadable(f"the operator cannot read {uri} (only file:// paths it mounts)")
    manifest = Path(uri.removeprefix("file://")) / NLU_MANIFEST
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelUnreadable(f"{manifest} is not on the operator's filesystem") from None
    except (OSError, ValueError) as exc:
        raise ModelUnreadable(f"{manifest}: {exc}") from None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ModelUnreadable(f"{manifest} names no labels (trained before labels were listed)")
    return labels
