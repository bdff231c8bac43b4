"""Loading an artifact and classifying queries: the API the data plane uses.

    clf = IntentClassifier.load("/models/nlu", quantization="int8", num_threads=1)
    [p] = clf.predict(["where is my order #A12345?"])
    p.intent, p.confidence, p.is_oos, p.slots, p.top_k

int8 runs the artifact's ONNX Runtime model (needs onnxruntime, not torch); "none" runs the fp32
weights in PyTorch. Both use the tokenizer copied into the artifact and load nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from . import artifact
from .data import OOS_LABEL
from .metrics import softmax
from .slots import Slot, SlotExtractor, SlotPattern, parse_patterns
from .tokenizer import IntArray, Tokenizer

if TYPE_CHECKING:
    from torch import nn

Quantization = Literal["int8", "none"]
Runtime = Literal["onnxruntime", "torch"]
QUANTIZATIONS: tuple[Quantization, ...] = ("int8", "none")
DEFAULT_RUNTIME: dict[Quantization, Runtime] = {"int8": "onnxruntime", "none": "torch"}


@dataclass(frozen=True)
class IntentScore:
    intent: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    intent: str
    """The decided intent: the top intent, or the oos label when `is_oos`."""
    confidence: float
    """Calibrated probability of the top intent."""
    is_oos: bool
    """The top intent is the oos label, or `confidence` is below the artifact's threshold."""
    slots: tuple[Slot, ...]
    top_k: tuple[IntentScore, ...]
    """The best intents with calibrated probabilities, best first (before the OOS decision)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Backend(Protocol):
    def logits(self, input_ids: IntArray, attention_mask: IntArray) -> npt.NDArray[np.float32]: ...


class _OnnxBackend:
    def __init__(self, path: Path, num_threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def logits(self, input_ids: IntArray, attention_mask: IntArray) -> npt.NDArray[np.float32]:
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        out: npt.NDArray[np.float32] = self._session.run(["logits"], feed)[0]
        return out


class _TorchBackend:
    def __init__(self, root: Path, num_labels: int, num_threads: int, int8: bool) -> None:
        import torch

        from .model import from_artifact, quantize_dynamic_torch

        # Process-wide in PyTorch: one classifier per process (one Serve replica) is the model.
        torch.set_num_threads(num_threads)
        model = from_artifact(root, num_labels)
        self._model: nn.Module = quantize_dynamic_torch(model) if int8 else model

    def logits(self, input_ids: IntArray, attention_mask: IntArray) -> npt.NDArray[np.float32]:
        import torch

        with torch.inference_mode():
            out = self._model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        result: npt.NDArray[np.float32] = out.float().numpy()
        return result


class IntentClassifier:
    """A loaded artifact. `predict` is thread-safe for ONNX Runtime and PyTorch inference."""

    def __init__(
        self,
        *,
        path: Path,
        manifest: dict[str, Any],
        labels: list[str],
        backend: _Backend,
        tokenizer: Tokenizer,
        temperature: float,
        threshold: float,
        slots: SlotExtractor,
        quantization: Quantization,
        runtime: Runtime,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.labels = labels
        self.temperature = temperature
        self.threshold = threshold
        self.quantization = quantization
        self.runtime = runtime
        self.slots = slots
        self.tokenizer = tokenizer
        self._backend = backend
        self._oos_index = labels.index(OOS_LABEL) if OOS_LABEL in labels else None

    @classmethod
    def load(
        cls,
        path: str | Path,
        quantization: Quantization = "int8",
        *,
        runtime: Runtime | None = None,
        num_threads: int = 1,
        threshold: float | None = None,
        slot_patterns: Sequence[SlotPattern] | None = None,
        verify: bool = True,
    ) -> IntentClassifier:
        """Load offline from an artifact directory.

        `quantization="int8"` runs ONNX Runtime's int8 model by default, `runtime="torch"`
        quantizes the fp32 weights with PyTorch dynamic int8 instead (for comparison);
        `"none"` runs fp32 in PyTorch. `threshold` and `slot_patterns` override the artifact's.
        Raises `ArtifactError` for a missing, incomplete, corrupt or other-version directory.
        """
        root = Path(path)
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
        if num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {num_threads}")
        chosen: Runtime = runtime or DEFAULT_RUNTIME[quantization]
        if quantization == "none" and chosen != "torch":
            raise ValueError("fp32 (quantization='none') runs in PyTorch only")
        manifest = artifact.read_manifest(root, verify=verify)
        labels = artifact.read_json(root, artifact.LABELS)
        calibration = artifact.read_json(root, artifact.CALIBRATION)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise artifact.ArtifactError(f"{root}: {artifact.LABELS} is not a list of names")
        try:
            temperature = float(calibration["temperature"][quantization])
            stored_threshold = float(calibration["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise artifact.ArtifactError(
                f"{root}: {artifact.CALIBRATION} lacks {exc}: retrain the artifact"
            ) from None
        if slot_patterns is None:
            slot_patterns = parse_patterns(
                artifact.read_json(root, artifact.SLOTS), str(root / artifact.SLOTS)
            )
        tokenizer = Tokenizer(root / artifact.TOKENIZER_FILE, int(manifest["max_length"]))
        backend: _Backend
        if chosen == "onnxruntime":
            backend = _OnnxBackend(root / artifact.INT8_ONNX, num_threads)
        else:
            backend = _TorchBackend(root, len(labels), num_threads, int8=quantization == "int8")
        return cls(
            path=root,
            manifest=manifest,
            labels=labels,
            backend=backend,
            tokenizer=tokenizer,
            temperature=temperature,
            threshold=stored_threshold if threshold is None else threshold,
            slots=SlotExtractor(slot_patterns),
            quantization=quantization,
            runtime=chosen,
        )

    @property
    def name(self) -> str:
        """`int8-onnxruntime`, `int8-torch` or `fp32-torch`."""
        precision = "fp32" if self.quantization == "none" else "int8"
        return f"{precision}-{self.runtime}"

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> npt.NDArray[np.float32]:
        """Raw logits, in batches of `batch_size` in the given order (padded to their longest)."""
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            input_ids, mask = self.tokenizer(texts[start : start + batch_size])
            out[start : start + batch_size] = self._backend.logits(input_ids, mask)
        return out

    def probabilities(self, texts: Sequence[str], batch_size: int = 64) -> npt.NDArray[np.float64]:
        """Calibrated probabilities (softmax at the artifact's temperature)."""
        return softmax(self.logits(texts, batch_size), self.temperature)

    def predict(
        self, texts: Sequence[str], *, top_k: int = 3, batch_size: int = 64
    ) -> list[Prediction]:
        if isinstance(texts, str):  # a str is a Sequence[str] of characters: a classic slip
            raise TypeError("predict takes a list of texts, not one string")
        if not texts:
            return []
        probs = self.probabilities(texts, batch_size)
        return [self._decide(text, row, top_k) for text, row in zip(texts, probs, strict=True)]

    def _decide(self, text: str, probs: npt.NDArray[np.float64], top_k: int) -> Prediction:
        order = np.argsort(-probs)[: max(1, top_k)]
        best = int(order[0])
        confidence = float(probs[best])
        is_oos = best == self._oos_index or confidence < self.threshold
        return Prediction(
            intent=OOS_LABEL if is_oos else self.labels[best],
            confidence=confidence,
            is_oos=is_oos,
            slots=tuple(self.slots.extract(text)),
            top_k=tuple(IntentScore(self.labels[i], float(probs[i])) for i in order),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "variant": self.name,
            "labels": len(self.labels),
            "temperature": self.temperature,
            "threshold": self.threshold,
            "created": self.manifest.get("created"),
        }


def read_metrics(path: str | Path) -> dict[str, Any]:
    metrics: dict[str, Any] = json.loads(
        (Path(path) / artifact.METRICS).read_text(encoding="utf-8")
    )
    return metrics
