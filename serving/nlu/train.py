"""Fine-tuning the encoder and head, calibrating, quantizing, and writing the artifact."""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import artifact
from .data import OOS_LABEL, Example, label_counts, stratified_split
from .metrics import (
    accuracy,
    best_oos_threshold,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    softmax,
)
from .model import (
    TOKENIZER_FILES,
    IntentModel,
    base_encoder_dir,
    base_encoder_info,
    encoder_config_of,
    export_onnx,
    from_base,
    quantize_onnx_int8,
    save_weights,
)
from .slots import DEFAULT_SLOT_PATTERNS, SlotPattern, patterns_to_json
from .tokenizer import Tokenizer, pad

DEFAULT_THRESHOLD = 0.5
"""Without oos examples to tune on: reject when the calibrated confidence says "more likely wrong
than right"."""


@dataclass
class TrainConfig:
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-4
    """Encoder learning rate (AdamW, linear warm-up then linear decay)."""
    head_learning_rate: float = 3e-3
    """The head starts from scratch, so it learns faster than the pretrained encoder."""
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    max_length: int = 64
    """Tokens per query; 99% of Banking77 queries have at most 53."""
    dropout: float = 0.1
    label_smoothing: float = 0.1
    """Banking77-like ticket labels are noisy (~14% there); smoothing keeps the model from
    memorising the wrong ones. Temperature scaling undoes its effect on confidences."""
    val_split: float = 0.1
    seed: int = 0
    oos_threshold: float | None = None
    """None: tuned on validation when the data has an oos class, else DEFAULT_THRESHOLD."""
    threads: int | None = None
    """Torch threads while training (default: every core)."""
    device: str = "cpu"
    """Torch device fine-tuning runs on (`cpu`, `cuda`); export, calibration and the artifact
    are the same either way (the model comes back to the CPU after training)."""

    def tuned(
        self, epochs: int | None, batch_size: int | None, learning_rate: float | None
    ) -> TrainConfig:
        """This configuration with the command line's optional settings (None keeps ours)."""
        return replace(
            self,
            epochs=self.epochs if epochs is None else epochs,
            batch_size=self.batch_size if batch_size is None else batch_size,
            learning_rate=self.learning_rate if learning_rate is None else learning_rate,
        )


@dataclass
class TrainResult:
    path: Path
    metrics: dict[str, Any]
    labels: list[str]
    model: IntentModel
    """The fp32 network as trained (what `model.safetensors` holds)."""


def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length examples: less padding, same randomness per epoch.
    Sorting happens within windows of 50 batches, so batches still mix the whole data set."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def fine_tune(
    examples: Sequence[Example],
    labels: Sequence[str],
    tokenizer: Tokenizer,
    config: TrainConfig,
    *,
    progress: bool = True,
) -> IntentModel:
    """Train encoder and head with cross-entropy on `examples`."""
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    index = {label: i for i, label in enumerate(labels)}
    ids = tokenizer.ids([ex.text for ex in examples])
    device = torch.device(config.device)
    gold = torch.tensor([index[ex.label] for ex in examples], dtype=torch.long, device=device)
    model = from_base(len(labels), config.dropout).to(device)
    # The word-embedding matrix is 11.7M of the 22.7M parameters and a batch touches a few hundred
    # of its rows: freezing it skips half of AdamW's work and keeps rare words where pretraining
    # put them.
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": config.learning_rate},
            {"params": list(model.head.parameters()), "lr": config.head_learning_rate},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(total * config.warmup_fraction))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    lengths = [len(x) for x in ids]
    model.train()
    bar = tqdm(total=total, desc="train", unit="step", disable=not progress, file=sys.stderr)
    for epoch in range(config.epochs):
        running = 0.0
        for n, batch in enumerate(_batches(lengths, config.batch_size, rng), start=1):
            input_ids, mask = pad([ids[i] for i in batch])
            logits = model(
                torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)
            )
            loss = torch.nn.functional.cross_entropy(
                logits, gold[batch], label_smoothing=config.label_smoothing
            )
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.item()
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{running / n:.3f}")
    bar.close()
    return model.cpu().eval()


def _choose_threshold(
    probs: np.ndarray[Any, Any], gold: list[str], labels: list[str], config: TrainConfig
) -> tuple[float, str]:
    if config.oos_threshold is not None:
        return config.oos_threshold, "set with --oos-threshold"
    if OOS_LABEL in labels and OOS_LABEL in gold:
        top = probs.argmax(axis=1)
        threshold = best_oos_threshold(
            probs.max(axis=1),
            top == labels.index(OOS_LABEL),
            np.array([g == OOS_LABEL for g in gold]),
            prefer=DEFAULT_THRESHOLD,
        )
        return (
            threshold,
            f"maximises OOS F1 on the validation split (ties: nearest {DEFAULT_THRESHOLD})",
        )
    return DEFAULT_THRESHOLD, "default: no oos examples to tune on"


def _variant_metrics(
    probs: np.ndarray[Any, Any], gold: list[str], labels: list[str], threshold: float
) -> dict[str, Any]:
    top = probs.argmax(axis=1)
    pred = [labels[i] for i in top]
    confidence = probs.max(axis=1)
    flagged = (confidence < threshold) | np.array([p == OOS_LABEL for p in pred])
    in_scope = np.array([g != OOS_LABEL for g in gold])
    return {
        "accuracy": round(accuracy(gold, pred), 4),
        "macro_f1": round(macro_f1(gold, pred), 4),
        "ece": round(expected_calibration_error(confidence, np.array(pred) == np.array(gold)), 4),
        # In-scope validation queries that would be handed off as out of scope.
        "in_scope_flagged": round(float(flagged[in_scope].mean()) if in_scope.any() else 0.0, 4),
    }


def _model_card(metrics: dict[str, Any], manifest: dict[str, Any]) -> str:
    data = metrics["data"]
    val = metrics["validation"]
    rows = "\n".join(
        f"| {name} | {v['accuracy']:.4f} | {v['macro_f1']:.4f} | {v['ece']:.4f} |"
        for name, v in val.items()
    )
    train = metrics["training"]
    return f"""# Intent classifier (switchboard NLU artifact, format {artifact.FORMAT_VERSION})

- Created: {manifest["created"]}
- Encoder: {manifest["encoder"]["name"]} (from {manifest["encoder"]["package"]} \
{manifest["encoder"]["package_version"]}), fine-tuned, mean pooling, linear head
- Data: {", ".join(data["sources"])}: {data["rows"]} rows, {data["intents"]} intents \
({data["train_rows"]} train / {data["validation_rows"]} validation, seed {train["seed"]}){
        f"; feedback merged: {data['feedback']}" if data.get("feedback") else ""
    }
- Training: {train["epochs"]} epochs in {train["seconds"]:.0f} s on {train["threads"]} thread(s)
- Out of scope: calibrated confidence below {metrics["calibration"]["threshold"]} \
({metrics["calibration"]["threshold_rule"]}){
        f", or the `{OOS_LABEL}` intent" if OOS_LABEL in metrics["labels"] else ""
    }
- Serving: int8 = ONNX Runtime dynamic int8 (`{artifact.INT8_ONNX}`); fp32 = PyTorch
  (`{artifact.WEIGHTS}`)

## Validation metrics (held-out split of the training data)

| variant | accuracy | macro-F1 | ECE (calibrated) |
|---|---|---|---|
{rows}

Evaluate on your own test set with `switchboard nlu eval --model DIR --data CSV`.
"""


def train_artifact(
    examples: Sequence[Example],
    out: str | Path,
    config: TrainConfig,
    *,
    sources: Sequence[str],
    slot_patterns: Sequence[SlotPattern] = DEFAULT_SLOT_PATTERNS,
    feedback: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Split, fine-tune, calibrate, quantize and write the artifact directory `out`.

    `examples` must already be validated (`data.read_csv` + `data.check_classes`).
    """
    out = Path(out)
    artifact.check_writable(out)
    threads = config.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    train, val = stratified_split(examples, config.val_split, config.seed)
    labels = sorted({ex.label for ex in examples})
    encoder_dir = base_encoder_dir()
    tokenizer = Tokenizer(encoder_dir / "tokenizer.json", config.max_length)

    started = time.perf_counter()
    cpu_started = time.process_time()
    model = fine_tune(train, labels, tokenizer, config, progress=progress)
    train_seconds = time.perf_counter() - started
    # CPU time of all threads: on a shared machine it says what the run cost when wall time
    # says how busy the neighbours were.
    train_cpu_seconds = time.process_time() - cpu_started

    staging = artifact.staging_dir(out)
    try:
        (staging / artifact.TOKENIZER_DIR).mkdir()
        for name in TOKENIZER_FILES:
            shutil.copyfile(encoder_dir / name, staging / artifact.TOKENIZER_DIR / name)
        save_weights(model, staging / artifact.WEIGHTS)
        artifact.write_json(staging / artifact.ENCODER_CONFIG, encoder_config_of(model))
        artifact.write_json(staging / artifact.LABELS, labels)
        artifact.write_json(staging / artifact.SLOTS, patterns_to_json(slot_patterns))
        fp32_onnx = staging / "model.fp32.onnx"
        export_onnx(model, fp32_onnx)
        quantize_onnx_int8(fp32_onnx, staging / artifact.INT8_ONNX)
        fp32_onnx.unlink()
        quantize_seconds = time.perf_counter() - started - train_seconds

        # Calibrate each precision on its own logits: int8 shifts them slightly.
        val_texts = [ex.text for ex in val]
        val_gold = [ex.label for ex in val]
        gold_index = np.array([labels.index(g) for g in val_gold], dtype=np.int64)
        fp32_logits = _torch_logits(model, tokenizer, val_texts)
        int8_logits = _onnx_logits(staging / artifact.INT8_ONNX, tokenizer, val_texts, threads)
        temperature = {
            "none": fit_temperature(fp32_logits, gold_index),
            "int8": fit_temperature(int8_logits, gold_index),
        }
        int8_probs = softmax(int8_logits, temperature["int8"])
        threshold, rule = _choose_threshold(int8_probs, val_gold, labels, config)
        calibration = {
            "temperature": temperature,
            "threshold": threshold,
            "threshold_rule": rule,
            "oos_label": OOS_LABEL if OOS_LABEL in labels else None,
        }
        artifact.write_json(staging / artifact.CALIBRATION, calibration)

        created = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        encoder = base_encoder_info()
        manifest = {
            "created": created,
            "max_length": config.max_length,
            "encoder": encoder,
            "tokenizer": {
                "dir": artifact.TOKENIZER_DIR,
                "source": f"{encoder['package']} {encoder['package_version']} (copied)",
            },
            "int8": {"runtime": "onnxruntime", "method": "dynamic", "weights": "per-channel"},
            # The label set, for readers that only fetch the manifest (the operator checks an
            # agent's plans against it); labels.json stays the runtime's source of logit order.
            "labels": list(labels),
        }
        validation = {
            "fp32": _variant_metrics(
                softmax(fp32_logits, temperature["none"]), val_gold, labels, threshold
            ),
            "int8": _variant_metrics(int8_probs, val_gold, labels, threshold),
        }
        validation["int8"]["agreement_with_fp32"] = round(
            float((fp32_logits.argmax(1) == int8_logits.argmax(1)).mean()), 4
        )
        metrics: dict[str, Any] = {
            "created": created,
            "labels": labels,
            "data": {
                "sources": list(sources),
                "rows": len(examples),
                "intents": len(labels),
                "train_rows": len(train),
                "validation_rows": len(val),
                "per_intent": label_counts(examples),
                **({"feedback": feedback} if feedback else {}),
            },
            "training": {
                **asdict(config),
                "threads": threads,
                "seconds": round(train_seconds, 1),
                "cpu_seconds": round(train_cpu_seconds, 1),
                "export_and_quantize_seconds": round(quantize_seconds, 1),
            },
            "calibration": calibration,
            "validation": validation,
        }
        artifact.write_json(staging / artifact.METRICS, metrics)
        (staging / artifact.MODEL_CARD).write_text(_model_card(metrics, manifest), encoding="utf-8")
        artifact.finalize(staging, manifest)
        artifact.publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return TrainResult(path=out, metrics=metrics, labels=labels, model=model)


def _torch_logits(
    model: IntentModel, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 64
) -> np.ndarray[Any, np.dtype[np.float32]]:
    out = np.zeros((len(texts), model.head.out_features), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            input_ids, mask = tokenizer(texts[start : start + batch_size])
            logits = model(torch.from_numpy(input_ids), torch.from_numpy(mask))
            out[start : start + batch_size] = logits.numpy()
    return out


def _onnx_logits(
    path: Path, tokenizer: Tokenizer, texts: Sequence[str], threads: int, batch_size: int = 64
) -> np.ndarray[Any, np.dtype[np.float32]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    chunks = []
    for start in range(0, len(texts), batch_size):
        input_ids, mask = tokenizer(texts[start : start + batch_size])
        chunks.append(session.run(["logits"], {"input_ids": input_ids, "attention_mask": mask})[0])
    return np.concatenate(chunks).astype(np.float32)
