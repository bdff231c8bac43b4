"""The LLM backends: a tiny causal LM built from a config into a temp folder (no hub), a real
OpenAI-compatible HTTP server on 127.0.0.1, and the clear errors when something is missing."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from switchboard.serving.config import LlmConfig
from switchboard.serving.llm import (
    EndpointError,
    LlmError,
    OpenAIGenerator,
    TransformersGenerator,
    load_generator,
    quantize_int8_weights,
)
from switchboard.serving.tiny_llm import build_tiny_llm

QUESTION = "Customer: where is my order? Agent:"


def llm_config(**overrides: Any) -> LlmConfig:
    values: dict[str, Any] = {"backend": "transformers", "revision": "r1", "max_tokens": 64}
    return LlmConfig(**(values | overrides))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="module")
def fp32(model_dir: Path) -> TransformersGenerator:
    generator = load_generator(llm_config(model_path=str(model_dir)))
    assert isinstance(generator, TransformersGenerator)
    return generator


@pytest.fixture(scope="module")
def int8(model_dir: Path) -> TransformersGenerator:
    generator = load_generator(llm_config(model_path=str(model_dir), quantization="int8"))
    assert isinstance(generator, TransformersGenerator)
    return generator


# --- transformers backend ------------------------------------------------------------------


def test_tiny_llm_is_saved_as_a_complete_model_directory(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names


def test_generation_is_greedy_bounded_and_returns_only_new_text(
    fp32: TransformersGenerator,
) -> None:
    first = fp32.generate_sync(QUESTION, 64)
    # The tiny model learnt this exchange when it was built: greedy decoding recites it and
    # stops at EOS well before the bound.
    assert "your order has shipped" in first.text
    assert QUESTION not in first.text and "Agent:" not in first.text
    assert 0 < first.new_tokens < 64
    again = fp32.generate_sync(QUESTION, 64)
    assert (again.text, again.new_tokens) == (first.text, first.new_tokens)
    for limit in (1, 3, 5):
        short = fp32.generate_sync(QUESTION, limit)
        assert short.new_tokens == limit  # EOS comes later: the bound is what stopped it
        assert first.text.startswith(short.text)


def test_text_after_a_stop_marker_is_dropped(model_dir: Path) -> None:
    # The default marker is "\nCustomer:" (a base model writing the customer's next line).
    generator = TransformersGenerator(model_dir, stop=(" has shipped",))
    assert generator.generate_sync(QUESTION, 64).text == " your order"


def test_async_generate_matches_and_does_not_block_the_loop(fp32: TransformersGenerator) -> None:
    async def scenario() -> tuple[list[str], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        texts = await asyncio.gather(*(fp32.generate(QUESTION, 64) for _ in range(3)))
        task.cancel()
        return texts, ticks

    texts, ticks = asyncio.run(scenario())
    assert texts == [fp32.generate_sync(QUESTION, 64).text] * 3
    assert ticks > 3


def test_config_max_tokens_caps_every_request(model_dir: Path) -> None:
    capped = load_generator(llm_config(model_path=str(model_dir), max_tokens=4))
    assert isinstance(capped, TransformersGenerator)
    assert capped.generate_sync(QUESTION, 1000).new_tokens == 4
    assert capped.generate_sync(QUESTION, 2).new_tokens == 2


def test_long_prompts_keep_their_end(fp32: TransformersGenerator) -> None:
    question = "Customer: how do I reset my password? Agent:"
    prompt = "Order status: processing, shipped, delivered, cancelled, refunded. " * 400 + question
    full = fp32.tokenizer(prompt)["input_ids"]
    assert len(full) > fp32.context_length
    kept = fp32.prompt_ids(prompt, 16)
    assert len(kept) + 16 == fp32.context_length and kept == full[-len(kept) :]
    assert fp32.tokenizer.decode(kept).endswith(question)
    result = fp32.generate_sync(prompt, 16)
    assert result.prompt_tokens + result.new_tokens <= fp32.context_length
    assert 0 < result.new_tokens <= 16


def test_int8_dynamic_quantization_generates(
    int8: TransformersGenerator, fp32: TransformersGenerator
) -> None:
    import torch

    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert not any(type(m) is torch.nn.Linear for m in int8.model.modules())
    assert any(isinstance(m, dynamic) for m in int8.model.modules())
    result = int8.generate_sync(QUESTION, 8)
    assert result.text.strip() and 0 < result.new_tokens <= 8
    assert int8.generate_sync(QUESTION, 8).text == result.text
    assert asyncio.run(int8.generate(QUESTION, 64)) == int8.generate_sync(QUESTION, 64).text


def test_bf16_on_cpu_generates(model_dir: Path) -> None:
    import torch

    bf16 = load_generator(llm_config(model_path=str(model_dir), quantization="bf16"))
    assert isinstance(bf16, TransformersGenerator)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert 0 < bf16.generate_sync(QUESTION, 6).new_tokens <= 6


def test_int8_weight_modules_match_the_float_model(fp32: TransformersGenerator) -> None:
    """The CUDA int8 path (int8 weights, per-channel scales), checked here on CPU."""
    import copy

    import torch

    quantized = quantize_int8_weights(copy.deepcopy(fp32.model))
    assert not any(type(m) is torch.nn.Linear for m in quantized.modules())
    assert all(b.dtype == torch.int8 for n, b in quantized.named_buffers() if "weight_int8" in n)
    ids = fp32.tokenizer(QUESTION, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        want, got = fp32.model(ids).logits, quantized(ids).logits
    # Per-channel int8 keeps the logits within a few percent; the next token (last position)
    # is the same. Mid-prompt positions with near-ties may flip, so they are not compared.
    assert float((got - want).abs().max()) < 0.05 * float(want.abs().max())
    assert int(got[0, -1].argmax()) == int(want[0, -1].argmax())


def test_cuda_without_a_gpu_is_a_clear_error(model_dir: Path) -> None:
    import torch

    if torch.cuda.is_available():  # a GPU machine: the bf16 path loads instead
        load_generator(llm_config(model_path=str(model_dir), device="cuda", quantization="bf16"))
        return
    with pytest.raises(LlmError, match="cuda but torch sees no CUDA device"):
        load_generator(llm_config(model_path=str(model_dir), device="cuda", quantization="bf16"))


def test_missing_or_incomplete_model_directory(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(LlmError, match=r"needs llm.model_path"):
        load_generator(llm_config())
    with pytest.raises(LlmError, match=r"nowhere does not exist"):
        load_generator(llm_config(model_path=str(tmp_path / "nowhere")))
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    with pytest.raises(LlmError, match=r"incomplete: missing weights .*; a tokenizer"):
        load_generator(llm_config(model_path=str(partial)))
    (partial / "model.safetensors").write_bytes(b"not a safetensors file")
    (partial / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes())
    with pytest.raises(LlmError, match="cannot load the LLM from"):
        load_generator(llm_config(model_path=str(partial)))


# --- vllm backend ----------------------------------------------------------------------


def test_vllm_without_the_package_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # as on the CPU image: import fails
    with pytest.raises(LlmError, match="backend vllm needs the vllm package on a GPU image"):
        load_generator(llm_config(backend="vllm", model_path=str(model_dir)))


# --- openai backend --------------------------------------------------------------------


@dataclass
class FakeEndpoint:
    """An OpenAI-compatible server on 127.0.0.1, on its own event loop in a thread."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


ENDPOINT = web.AppKey("endpoint", FakeEndpoint)


async def _chat(request: web.Request) -> web.Response:
    endpoint = request.app[ENDPOINT]
    body = await request.json()
    endpoint.requests.append({"path": request.path, "headers": dict(request.headers), **body})
    mode = request.match_info["mode"]
    if mode == "fail":
        return web.json_response({"error": {"message": "model overloaded"}}, status=500)
    if mode == "slow":
        await asyncio.sleep(1)
    if mode == "empty":
        return web.json_response({"object": "chat.completion", "choices": []})
    content = f"echo({body['messages'][-1]['content'][:20]})"
    return web.json_response(
        {
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        }
    )


@pytest.fixture(scope="module")
def endpoint() -> Iterator[FakeEndpoint]:
    loop = asyncio.new_event_loop()
    server = FakeEndpoint(url="")
    app = web.Application()
    app[ENDPOINT] = server
    app.router.add_post("/{mode}/v1/chat/completions", _chat)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)  # port 0: any free port
    loop.run_until_complete(site.start())
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def generate_once(generator: Any, prompt: str, max_tokens: int) -> str:
    """One request on a fresh event loop, closing the client's connection pool after it."""

    async def run() -> str:
        try:
            text: str = await generator.generate(prompt, max_tokens)
            return text
        finally:
            await generator.aclose()

    return asyncio.run(run())


def openai_config(url: str, **overrides: Any) -> LlmConfig:
    values: dict[str, Any] = {
        "backend": "openai",
        "endpoint": url,
        "model_name": "support-7b",
        "api_key_env": "SWITCHBOARD_TEST_LLM_KEY",
        "max_tokens": 50,
    }
    return llm_config(**(values | overrides))


def test_openai_sends_key_model_and_bounded_max_tokens(
    endpoint: FakeEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHBOARD_TEST_LLM_KEY", "sk-test-123")
    generator = load_generator(openai_config(f"{endpoint.url}/ok"))
    endpoint.requests.clear()

    async def two_calls() -> list[str]:
        try:
            return [await generator.generate(QUESTION, 500), await generator.generate("Hi", 7)]
        finally:
            await generator.aclose()

    assert asyncio.run(two_calls()) == [f"echo({QUESTION[:20]})", "echo(Hi)"]
    first, second = endpoint.requests
    assert first["path"] == "/ok/v1/chat/completions"
    assert first["headers"]["Authorization"] == "Bearer sk-test-123"
    assert first["model"] == "support-7b"
    assert first["messages"] == [{"role": "user", "content": QUESTION}]
    assert (first["max_tokens"], second["max_tokens"]) == (50, 7)  # capped by the config
    assert first["temperature"] == 0
    # A later event loop (another asyncio.run) gets its own connection pool.
    assert generate_once(generator, "again", 5) == "echo(again)"


def test_openai_base_url_may_end_in_v1(
    endpoint: FakeEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHBOARD_TEST_LLM_KEY", "k")
    generator = load_generator(openai_config(f"{endpoint.url}/ok/v1/"))
    assert generate_once(generator, "Hi", 5) == "echo(Hi)"


def test_openai_errors_raise(endpoint: FakeEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_TEST_LLM_KEY", "k")
    failing = load_generator(openai_config(f"{endpoint.url}/fail"))
    with pytest.raises(EndpointError, match=r"HTTP 500: .*model overloaded") as error:
        generate_once(failing, "Hi", 5)
    assert error.value.status == 500
    empty = load_generator(openai_config(f"{endpoint.url}/empty"))
    with pytest.raises(LlmError, match="without choices"):
        generate_once(empty, "Hi", 5)
    slow = OpenAIGenerator(f"{endpoint.url}/slow", "m", api_key=None, timeout_s=0.2)
    with pytest.raises(LlmError, match=r"unreachable: .*Timeout"):
        generate_once(slow, "Hi", 5)


def test_openai_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHBOARD_TEST_LLM_KEY", raising=False)
    with pytest.raises(LlmError, match=r"SWITCHBOARD_TEST_LLM_KEY .* is not set"):
        load_generator(openai_config("http://127.0.0.1:9"))
    with pytest.raises(LlmError, match=r"needs llm.endpoint"):
        load_generator(openai_config("", endpoint=None))
    with pytest.raises(LlmError, match=r"needs llm.model_name"):
        load_generator(openai_config("http://127.0.0.1:9", model_name=None))
    # No key variable named: an endpoint without auth (a local vLLM server), no header sent.
    keyless = load_generator(openai_config("http://127.0.0.1:9", api_key_env=None))
    assert isinstance(keyless, OpenAIGenerator)
    assert "Authorization" not in keyless._headers
