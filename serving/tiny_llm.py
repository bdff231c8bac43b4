"""Causal LMs built from a config, with a tokenizer trained on the spot: no model hub involved.

`build_tiny_llm` makes the small model (~160k parameters, under 1 MB) that tests and `make demo`
load through the transformers backend. A few seconds of training on `CORPUS` make it answer in
support-desk sentences and stop at EOS instead of emitting noise; it knows nothing else.
`build_benchmark_llm` makes the ~100M-parameter variant (random weights) for GPU tokens/s runs.

    python -m switchboard.serving.tiny_llm OUT_DIR [--benchmark]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

# What the tokenizer learns its merges from: support-desk phrasing, so prompts split into
# word-sized pieces rather than bytes (shorter sequences, closer to a real tokenizer).
CORPUS = (
    "You are a customer-support agent. Answer the customer in two sentences at most.",
    "Answer from the passages only, using only these facts.",
    "Customer: where is my order? Agent: your order has shipped and arrives on Tuesday.",
    "Customer: I want to return an item. Agent: items can be returned within 30 days.",
    "Customer: how do I reset my password? Agent: use Forgot password on the sign-in page.",
    "Standard delivery takes 3-5 business days; express delivery takes 1-2 business days.",
    "Refunds reach the original payment method within 5-10 business days.",
    "We accept credit cards, debit cards, PayPal and bank transfers.",
    "The tracking link is emailed when the parcel leaves the warehouse.",
    "I have passed this to a human agent with our conversation so far.",
    "Order status: processing, shipped, delivered, cancelled, refunded.",
    "Thank you for contacting us. Is there anything else I can help you with?",
    '{"slots": {"order_id": "A-1001"}, "result": {"status": "shipped", "eta": "2025-01-07"}}',
    "Passages: [shipping.md#1] [returns.md#1] [account.md#1] [payments.md#1]",
)


def train_tokenizer(out_dir: Path, vocab_size: int, corpus: Iterable[str]) -> int:
    """A byte-level BPE tokenizer (any UTF-8 text encodes, nothing is ever unknown), saved in
    transformers' format; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer)
    fast: Any = PreTrainedTokenizerFast  # untyped constructor
    wrapped = fast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )
    wrapped.save_pretrained(out_dir)
    return len(wrapped)


def build_tiny_llm(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = 2,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    vocab_size: int = 1024,
    seed: int = 0,
    corpus: Iterable[str] = CORPUS,
    train_steps: int = 100,
) -> Path:
    """Build a Llama-architecture causal LM from a config and save model + tokenizer to
    `out_dir` (safetensors). Llama rather than GPT-2: its projections are `nn.Linear`, which is
    what int8 dynamic quantization replaces (GPT-2 uses `Conv1D`)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(corpus)
    vocab = train_tokenizer(out, vocab_size, texts)
    eos_id = 0  # the first special token of the trainer
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if train_steps > 0:
        _memorize(model, out, texts, train_steps)
    generation: Any = GenerationConfig  # untyped constructor
    model.generation_config = generation(
        do_sample=False, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=1
    )
    model.save_pretrained(out)
    (out / "switchboard-tiny-llm.json").write_text(
        json.dumps(
            {
                "parameters": sum(p.numel() for p in model.parameters()),
                "seed": seed,
                "train_steps": train_steps,
                "note": "built from a config for tests and benchmarks; no pretrained weights",
            },
            indent=1,
        )
        + "\n"
    )
    return out


def _memorize(model: Any, tokenizer_dir: Path, texts: list[str], steps: int) -> None:
    """Full-batch AdamW on the corpus (each line ending in EOS) until the model has it by heart."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    batch = tokenizer([t + EOS_TOKEN for t in texts], padding=True, return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100  # no loss on padding
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # Matrices this small gain nothing from a second thread, and on a busy machine an
    # oversubscribed pool made the build 5x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in range(steps):
            loss = model(**batch, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        model.eval()
        torch.set_num_threads(threads)


def build_benchmark_llm(out_dir: str | Path, *, seed: int = 0) -> Path:
    """The ~100M-parameter variant (12 layers of width 768, ~99.6M parameters) for GPU tokens/s
    runs: large enough that weight bandwidth, which bf16 and int8 weights change, dominates."""
    return build_tiny_llm(
        out_dir,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        num_kv_heads=12,
        intermediate_size=2560,
        max_positions=2048,
        seed=seed,
        train_steps=0,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir")
    parser.add_argument("--benchmark", action="store_true", help="the ~100M-parameter variant")
    args = parser.parse_args(argv)
    build = build_benchmark_llm if args.benchmark else build_tiny_llm
    print(build(args.out_dir))


if __name__ == "__main__":
    main()
