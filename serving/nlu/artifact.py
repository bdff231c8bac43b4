"""The NLU artifact: a versioned directory that SupportAgent and ModelRollout reference by path.

Layout (format version 1)::

    manifest.json          format, version, creation time, encoder, tokenizer reference, sha256
                           of every other file
    labels.json            intent names; index i is logit i
    encoder_config.json    the BERT configuration of the encoder (to build it without the network)
    model.safetensors      fine-tuned encoder (`encoder.*`) and head (`head.*`), fp32
    model.int8.onnx        the same network, ONNX Runtime dynamic int8 (per-channel weights),
                           quantized at training time so serving needs neither torch nor onnx
    calibration.json       softmax temperature per precision, OOS threshold and how it was chosen
    slots.json             slot patterns (serving.nlu.slots)
    tokenizer/             tokenizer files copied from the base encoder (source in the manifest)
    metrics.json           validation metrics and training facts
    README.md              model card: data, date, metrics

Standard library only: reading a manifest must not import torch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import NLU_MANIFEST

FORMAT = "switchboard-nlu"
FORMAT_VERSION = 1

MANIFEST = NLU_MANIFEST
LABELS = "labels.json"
ENCODER_CONFIG = "encoder_config.json"
WEIGHTS = "model.safetensors"
INT8_ONNX = "model.int8.onnx"
CALIBRATION = "calibration.json"
SLOTS = "slots.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = f"{TOKENIZER_DIR}/tokenizer.json"
METRICS = "metrics.json"
MODEL_CARD = "README.md"

REQUIRED_FILES = (
    LABELS,
    ENCODER_CONFIG,
    WEIGHTS,
    INT8_ONNX,
    CALIBRATION,
    SLOTS,
    TOKENIZER_FILE,
    METRICS,
    MODEL_CARD,
)


class ArtifactError(Exception):
    """An artifact directory that cannot be loaded (missing, incomplete, corrupt, other version)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(root: Path, name: str) -> Any:
    try:
        return json.loads((root / name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{root}: incomplete NLU artifact: {name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{root}: {name} is unreadable: {exc}") from None


def read_manifest(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of the artifact at `path`, after checking format, version and files.

    `verify` also compares every file's sha256 with the manifest (about 0.3 s): a truncated copy
    fails here instead of serving garbage.
    """
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such NLU artifact directory")
    if not (root / MANIFEST).is_file():
        raise ArtifactError(
            f"{root}: not an NLU artifact (no {MANIFEST}); create one with `switchboard nlu train`"
        )
    manifest = read_json(root, MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{root}: {MANIFEST} is not a {FORMAT} manifest (format: {found!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{root}: artifact format version {version!r}, but this switchboard reads version "
            f"{FORMAT_VERSION}; retrain it with this version's `switchboard nlu train`"
        )
    files = manifest.get("files")
    if not isinstance(files, Mapping):
        raise ArtifactError(f"{root}: {MANIFEST} has no 'files' table")
    missing = sorted({*REQUIRED_FILES, *files} - {n for n in files if (root / n).is_file()})
    if missing:
        raise ArtifactError(f"{root}: incomplete NLU artifact: missing {', '.join(missing)}")
    if verify:
        bad = [name for name, digest in files.items() if sha256_file(root / name) != digest]
        if bad:
            raise ArtifactError(
                f"{root}: corrupt NLU artifact: checksum mismatch in {', '.join(sorted(bad))}"
            )
    return manifest


def finalize(staging: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest of a fully written staging directory, hashing every file in it."""
    files = {
        p.relative_to(staging).as_posix(): sha256_file(p)
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    absent = [name for name in REQUIRED_FILES if name not in files]
    if absent:  # a bug in the writer, not a user error
        raise RuntimeError(f"artifact is missing {absent}")
    write_json(
        staging / MANIFEST,
        {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION, "files": files},
    )


def staging_dir(out: Path) -> Path:
    """A fresh directory beside `out` (same filesystem, so `publish` is a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def check_writable(out: Path) -> None:
    """Refuse to replace a non-empty directory that is not an NLU artifact (someone's files)."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ArtifactError(
            f"{out}: directory is not empty and is not an NLU artifact; choose another --out"
        )


def publish(staging: Path, out: Path) -> None:
    """Replace `out` with the staging directory, so `out` is never half written."""
    check_writable(out)
    # mkdtemp and safetensors create owner-only files; serving pods may run as another user.
    for p in [staging, *staging.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
