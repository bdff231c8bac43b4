"""The LLM that phrases grounded answers, behind one interface for three backends.

`load_generator(config)` returns an object with `async generate(prompt, max_tokens) -> str`
(the orchestrator's `Generator` protocol):

* `transformers`: a causal LM from a local model directory, run in this process. CPU: fp32, or
  int8 dynamic quantization of every `nn.Linear` (`quantization: int8`), or bf16. CUDA: bf16
  (`bf16`), fp32 (`none`), or int8 *weights* (`int8`: int8 storage with per-output-channel
  scales, dequantized to bf16 inside each matmul: half the weight memory of bf16, no int8
  kernels, so not faster). Greedy, bounded, stops at EOS; the prompt is truncated from the
  front so its end (the question) always fits.
* `openai`: an OpenAI-compatible chat-completions endpoint over HTTP.
* `vllm`: the vllm engine, when the image carries it; otherwise loading fails with a clear error.

Every failure at load raises `LlmError` with what to fix; failures while generating raise too,
and the orchestrator answers from templates then. torch and transformers are imported only when
a model is loaded, so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .config import LlmConfig

if TYPE_CHECKING:
    import aiohttp
    import torch

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
# Where a base model, continuing the orchestrator's "Customer: … Agent:" prompt, would start
# writing the customer's next line itself.
DEFAULT_STOP = ("\nCustomer:",)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")


class LlmError(RuntimeError):
    """The LLM cannot be loaded or did not answer."""


class EndpointError(LlmError):
    """An OpenAI-compatible endpoint answered with a non-2xx status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"LLM endpoint returned HTTP {status}: {detail}")
        self.status = status


class TextGenerator(Protocol):
    async def generate(self, prompt: str, max_tokens: int) -> str: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    seconds: float


def load_generator(
    config: LlmConfig,
    *,
    num_threads: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> TextGenerator:
    """The backend `config` names, loaded and ready. `num_threads` sets torch's intra-op threads
    (process-wide) for CPU inference: one by default, because replicas, not threads, are how a
    Serve deployment scales, and several torch pools on one node would fight over its cores.
    `timeout_s` bounds one request to an external endpoint."""
    if config.backend == "transformers":
        return TransformersGenerator(
            _model_dir(config),
            device=config.device,
            quantization=config.quantization,
            max_tokens=config.max_tokens,
            num_threads=num_threads,
        )
    if config.backend == "openai":
        return OpenAIGenerator.from_config(config, timeout_s=timeout_s)
    if config.backend == "vllm":
        vllm = _import_vllm()  # first: on a CPU image the package, not the path, is the problem
        return VllmGenerator(
            vllm, _model_dir(config), quantization=config.quantization, max_tokens=config.max_tokens
        )
    raise LlmError(f"unknown LLM backend {config.backend!r}")


def _model_dir(config: LlmConfig) -> Path:
    """The model directory, checked for the files a load needs, so that a missing or half-copied
    model fails here with its path rather than deep inside transformers."""
    if not config.model_path:
        raise LlmError(f"backend {config.backend} needs llm.model_path (a local model directory)")
    if config.model_path.startswith("s3://"):
        from .model_store import ModelStoreError, resolve

        try:  # a Hugging Face directory has no manifest: checksums only when it carries one
            path = Path(resolve(config.model_path, config.storage, require_manifest=False))
        except ModelStoreError as exc:
            raise LlmError(f"LLM model: {exc}") from None
    else:
        path = Path(config.model_path)
    if not path.is_dir():
        raise LlmError(f"LLM model directory {path} does not exist (or is not a directory)")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append(f"weights (one of {', '.join(WEIGHT_FILES)})")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"a tokenizer (one of {', '.join(TOKENIZER_FILES)})")
    if missing:
        raise LlmError(f"LLM model directory {path} is incomplete: missing {'; '.join(missing)}")
    return path


# --- transformers ------------------------------------------------------------------------


class TransformersGenerator:
    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        quantization: str = "none",
        max_tokens: int = 256,
        num_threads: int = 1,
        stop: tuple[str, ...] = DEFAULT_STOP,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model directory, never the hub
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        if device == "cuda" and not torch.cuda.is_available():
            raise LlmError("llm.device is cuda but torch sees no CUDA device")
        if device not in ("cpu", "cuda"):
            raise LlmError(f"unsupported llm.device {device!r}")
        if device == "cpu":
            torch.set_num_threads(max(1, num_threads))
        dtype = torch.bfloat16 if quantization == "bf16" else torch.float32
        if device == "cuda" and quantization == "int8":
            dtype = torch.bfloat16  # int8 weights below compute in bf16
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            model: Any = AutoModelForCausalLM.from_pretrained(
                model_dir, local_files_only=True, dtype=dtype
            )
        except Exception as exc:  # OSError, ValueError, SafetensorError...: all say "bad model"
            raise LlmError(f"cannot load the LLM from {model_dir}: {exc}") from exc
        model.eval()
        if quantization == "int8" and device == "cpu":
            model = quantize_int8_dynamic(model)
        elif quantization == "int8":
            log.warning(
                "LLM int8 on cuda: int8 weights dequantized to bf16 in each matmul; half the "
                "weight memory of bf16, but no int8 kernels, so not faster than bf16"
            )
            model = quantize_int8_weights(model)
        self.model: Any = model.to(device)
        self.device = device
        self.quantization = quantization
        self.max_tokens = max_tokens
        self.stop = stop
        self.eos_token_id = self.tokenizer.eos_token_id
        if self.eos_token_id is None:
            self.eos_token_id = model.config.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_id
        self.context_length = _context_length(model.config, self.tokenizer)
        # One generation at a time per replica: its torch threads are the parallelism, and a
        # second concurrent run would only split the same cores (and double the KV memory).
        self._lock = threading.Lock()
        self.load_seconds = time.perf_counter() - started
        log.info(
            "LLM loaded from %s (%s, %s) in %.2fs",
            model_dir,
            device,
            quantization,
            self.load_seconds,
        )

    async def generate(self, prompt: str, max_tokens: int) -> str:
        return (await asyncio.to_thread(self.generate_sync, prompt, max_tokens)).text

    def generate_sync(self, prompt: str, max_tokens: int) -> Generation:
        """Greedy decoding of at most `min(max_tokens, config max_tokens)` new tokens."""
        import torch

        budget = self.token_budget(max_tokens)
        ids = self.prompt_ids(prompt, budget)
        inputs = torch.tensor([ids], device=self.device)
        started = time.perf_counter()
        with self._lock, torch.inference_mode():
            output = self.model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=budget,
                do_sample=False,
                num_beams=1,
                eos_token_id=self.eos_token_id,
                pad_token_id=self.pad_token_id,
            )
        new = output[0, len(ids) :].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        for marker in self.stop:
            text = text.split(marker, 1)[0]
        return Generation(
            text=text,
            prompt_tokens=len(ids),
            new_tokens=len(new),
            seconds=time.perf_counter() - started,
        )

    def token_budget(self, max_tokens: int) -> int:
        """New tokens a request may produce: its own bound, the config's, and the context's."""
        return max(1, min(max_tokens, self.max_tokens, self.context_length - 1))

    def prompt_ids(self, prompt: str, budget: int) -> list[int]:
        """The prompt's token ids, cut from the front so that prompt + `budget` new tokens fit
        the context: the question and the "Agent:" cue are last, the oldest context goes."""
        ids: list[int] = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return ids[-(self.context_length - budget) :] or [self.eos_token_id]

    async def aclose(self) -> None:
        return None


def _context_length(model_config: Any, tokenizer: Any) -> int:
    limits = [
        int(v)
        for v in (
            getattr(model_config, "max_position_embeddings", None),
            getattr(model_config, "n_positions", None),
            getattr(tokenizer, "model_max_length", None),
        )
        # Tokenizers without a limit report a huge sentinel (1e30).
        if isinstance(v, int) and 0 < v < 10**7
    ]
    return min(limits) if limits else 2048


def quantize_int8_dynamic(model: Any) -> Any:
    """CPU: int8 weights, activations quantized per batch at run time (`quantize_dynamic` on
    every nn.Linear). torch.ao marks it deprecated in favour of torchao, which this image does
    not carry; it is the int8 CPU path torch itself ships, so its warnings are muted here."""
    import torch
    from torch.ao.quantization import quantize_dynamic as _quantize_dynamic

    quantize_dynamic: Any = _quantize_dynamic  # untyped in torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def quantize_int8_weights(model: Any) -> Any:
    """Replace every nn.Linear (tied output heads included) by `Int8WeightLinear`, in place."""
    import torch

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, int8_weight_linear_class().from_linear(child))
    return model


@functools.cache
def int8_weight_linear_class() -> Any:
    """The int8-weight module class, defined on first use so that importing this module does
    not import torch."""
    import torch
    import torch.nn.functional as F

    class _Int8WeightLinear(torch.nn.Module):
        """y = x · (W_int8 · scale)ᵀ + b: symmetric per-output-channel int8 weights, dequantized
        to the activations' dtype for each matmul (works on any device)."""

        weight_int8: torch.Tensor
        scale: torch.Tensor

        def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: Any) -> None:
            super().__init__()
            self.register_buffer("weight_int8", weight)
            self.register_buffer("scale", scale)
            self.bias = bias
            self.in_features, self.out_features = weight.shape[1], weight.shape[0]

        @classmethod
        def from_linear(cls, linear: torch.nn.Linear) -> _Int8WeightLinear:
            weight = linear.weight.detach().float()
            scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
            q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
            return cls(q, scale, linear.bias)  # fp32 scales: bf16 ones would add rounding

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weight = self.weight_int8.to(x.dtype) * self.scale.to(x.dtype)[:, None]
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, weight, bias)

    return _Int8WeightLinear


# --- OpenAI-compatible endpoint ----------------------------------------------------------


class OpenAIGenerator:
    def __init__(
        self,
        endpoint: str,
        model_name: str,
        *,
        api_key: str | None,
        max_tokens: int = 256,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        base = endpoint.rstrip("/")
        # Accept both `https://host` and the common `https://host/v1` spelling of the base URL.
        self.url = (
            f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"
        )
        self.model_name = model_name
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(
        cls, config: LlmConfig, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> OpenAIGenerator:
        if not config.endpoint:
            raise LlmError("backend openai needs llm.endpoint (the base URL of the endpoint)")
        if not config.model_name:
            raise LlmError("backend openai needs llm.model_name (the model the endpoint serves)")
        api_key = None
        if config.api_key_env:
            api_key = os.environ.get(config.api_key_env)
            if not api_key:
                raise LlmError(
                    f"backend openai: environment variable {config.api_key_env} "
                    "(llm.api_key_env) is not set or empty"
                )
        return cls(
            config.endpoint,
            config.model_name,
            api_key=api_key,
            max_tokens=config.max_tokens,
            timeout_s=timeout_s,
        )

    def _client(self) -> aiohttp.ClientSession:
        """One pooled session per event loop: a session is bound to the loop that made it."""
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=self.timeout_s, connect=min(5.0, self.timeout_s)
                )
            )
            self._session_loop = loop
        return self._session

    async def generate(self, prompt: str, max_tokens: int) -> str:
        import aiohttp

        body = {
            "model": self.model_name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max(1, min(max_tokens, self.max_tokens)),
            "temperature": 0,
        }
        try:
            async with self._client().post(self.url, json=body, headers=self._headers) as response:
                if not 200 <= response.status < 300:
                    detail = (await response.text())[:200]
                    raise EndpointError(response.status, detail)
                payload = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LlmError(f"LLM endpoint {self.url} unreachable: {type(exc).__name__}") from exc
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise LlmError("LLM endpoint answered without choices[0].message.content") from exc
        return str(content or "")

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


# --- vllm --------------------------------------------------------------------------------


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise LlmError(
            "backend vllm needs the vllm package on a GPU image; it is not installed here "
            "(use backend transformers, or openai against a vLLM server)"
        ) from exc
    return vllm


class VllmGenerator:
    def __init__(
        self, vllm: Any, model_dir: Path, *, quantization: str = "none", max_tokens: int = 256
    ) -> None:
        if quantization == "int8":
            # vLLM takes int8 from a pre-quantized checkpoint (its quantization_config), not
            # from a load-time switch.
            raise LlmError(
                "backend vllm: quantization int8 is read from a pre-quantized checkpoint; "
                "set quantization none and point model_path at an int8 (W8A8) model directory"
            )
        args = vllm.AsyncEngineArgs(
            model=str(model_dir),
            dtype="bfloat16" if quantization == "bf16" else "auto",
        )
        self._engine: Any = vllm.AsyncLLMEngine.from_engine_args(args)
        self._sampling: Any = vllm.SamplingParams
        self.max_tokens = max_tokens

    async def generate(self, prompt: str, max_tokens: int) -> str:
        params = self._sampling(
            temperature=0.0, max_tokens=max(1, min(max_tokens, self.max_tokens))
        )
        final: Any = None
        async for output in self._engine.generate(prompt, params, uuid.uuid4().hex):
            final = output
        if final is None or not final.outputs:
            raise LlmError("vllm returned no output")
        return str(final.outputs[0].text)

    async def aclose(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
