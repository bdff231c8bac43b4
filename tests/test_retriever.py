"""The knowledge-base retriever on a directory laid out like a mounted ConfigMap, with the real
MiniLM encoder (loaded once per module, from the installed package: nothing is downloaded)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from switchboard.serving.retriever import (
    KnowledgeBase,
    KnowledgeBaseRetriever,
    MiniLmEncoder,
    read_documents,
    split_document,
)
from switchboard.serving.workflow.orchestrator import Passage

DOCUMENTS = {
    "shipping.md": """# Shipping
Standard delivery takes 3-5 business days; express delivery takes 1-2 business days.
Orders placed before 2 pm leave the warehouse the same day.

## Tracking
A tracking link is emailed when the parcel leaves the warehouse. The shipping address can be
changed until the order ships.
""",
    "returns.md": """# Returns and refunds
Items can be returned within 30 days of delivery, unworn and with their labels. Print the
prepaid return label from your account.

Refunds reach the original payment method within 5-10 business days after we receive the
return.
""",
    "account.md": """# Account
## Password reset
To reset your password, use "Forgot password" on the sign-in page; the reset link is valid
for one hour. If the email does not arrive, check your spam folder.

## Two-factor authentication
Two-factor authentication can be turned on under Security settings.
""",
    "payments.md": """# Payment methods
We accept Visa, Mastercard and American Express credit cards, debit cards, PayPal, Apple Pay
and bank transfers. Invoices are available for business customers.
""",
    "privacy.txt": """Your data
We keep order history for seven years for tax purposes. You can request a copy of your
personal data, or ask us to delete your account, from the privacy page.
""",
    "cadeaux-café.md": """# Cartes cadeaux 🎁
Gift cards for the Café: from 10 € to 200 €, valid for two years, sent by email within minutes.
ギフトカードは2年間有効です。
""",
}

QUESTIONS = [
    ("how long does delivery take", "shipping.md"),
    ("where can I track my parcel?", "shipping.md"),
    ("how do I return something that doesn't fit", "returns.md"),
    ("when will I get my money back", "returns.md"),
    ("I forgot my password and can't sign in", "account.md"),
    ("do you take PayPal?", "payments.md"),
    ("please delete my personal data", "privacy.txt"),
    ("do you sell gift cards 🎁?", "cadeaux-café.md"),
]


def make_configmap_mount(root: Path, documents: dict[str, str]) -> Path:
    """What the kubelet writes for a ConfigMap volume: the files in a timestamped folder,
    `..data` pointing at it, and one top-level symlink per key through `..data`."""
    snapshot = root / "..2025_01_01_00_00_00.123456789"
    snapshot.mkdir(parents=True)
    for name, text in documents.items():
        (snapshot / name).write_text(text, encoding="utf-8")
    (root / "..data").symlink_to(snapshot.name)
    for name in documents:
        (root / name).symlink_to(f"..data/{name}")
    return root


@pytest.fixture(scope="module")
def encoder() -> MiniLmEncoder:
    return MiniLmEncoder()  # int8, the default


@pytest.fixture(scope="module")
def fp32_encoder() -> MiniLmEncoder:
    return MiniLmEncoder(quantize=False)


@pytest.fixture(scope="module")
def kb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_configmap_mount(tmp_path_factory.mktemp("kb"), DOCUMENTS)
    (root / ".hidden.md").write_text("# Hidden\nnot a document", encoding="utf-8")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n")
    (root / "drafts").mkdir()
    (root / "drafts" / "draft.md").write_text("# Draft", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def kb(kb_dir: Path, encoder: MiniLmEncoder) -> KnowledgeBase:
    return KnowledgeBase.load(kb_dir, top_k=3, encoder=encoder)


@pytest.fixture(scope="module")
def fp32_kb(kb_dir: Path, fp32_encoder: MiniLmEncoder) -> KnowledgeBase:
    return KnowledgeBase.load(kb_dir, top_k=3, encoder=fp32_encoder)


def test_configmap_mount_reads_each_key_once_and_skips_bookkeeping(kb_dir: Path) -> None:
    names = [d.name for d in read_documents(kb_dir)]
    # Not `..data`, the timestamped snapshot, dotfiles, other file types or folders.
    assert names == sorted(DOCUMENTS)
    assert read_documents(kb_dir)[0].text == DOCUMENTS["account.md"]


@pytest.mark.parametrize(("question", "document"), QUESTIONS)
def test_natural_questions_retrieve_the_right_document_first(
    kb: KnowledgeBase, fp32_kb: KnowledgeBase, question: str, document: str
) -> None:
    # The int8 encoder (the default) ranks like fp32: its speed costs no recall here.
    for base in (kb, fp32_kb):
        best = base.search(question, 3)[0]
        assert best.id.split("#")[0] == document, base.search(question, 3)


def test_passages_cite_their_document_and_heading(kb: KnowledgeBase) -> None:
    by_id = {p.id: p for p in kb.passages}
    assert by_id["shipping.md#1"].title == "Shipping"
    assert by_id["shipping.md#2"].title == "Tracking"
    assert "tracking link" in by_id["shipping.md#2"].text
    assert by_id["account.md#1"].title == "Password reset"
    # No heading: the passage is titled by its file.
    assert by_id["privacy.txt#1"].title == "privacy.txt"
    assert all(not p.text.startswith("#") for p in kb.passages)


def test_k_bounds_the_results_and_scores_are_sorted(kb: KnowledgeBase) -> None:
    n = len(kb)
    for k in (1, 2, 3, n, n + 10):
        results = kb.search("refund for a return", k)
        assert len(results) == min(k, n)
        scores = [p.score for p in results]
        assert scores == sorted(scores, reverse=True)
        assert len({p.id for p in results}) == len(results)
        assert all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)
    assert kb.search("refund", 0) == []
    assert len(kb.search("refund")) == 3  # top_k from the config


@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_embeddings_are_unit_vectors_and_deterministic(
    kind: str, encoder: MiniLmEncoder, fp32_encoder: MiniLmEncoder
) -> None:
    enc = encoder if kind == "int8" else fp32_encoder
    texts = ["how long does delivery take", "", "x " * 1000]  # empty and over-long inputs too
    first, second = enc.encode(texts), enc.encode(list(reversed(texts)))[::-1]
    assert first.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(first, second, atol=1e-5)  # batch order does not matter


def test_int8_encoder_quantizes_every_linear(
    encoder: MiniLmEncoder, fp32_encoder: MiniLmEncoder
) -> None:
    import torch

    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert not any(type(m) is torch.nn.Linear for m in encoder.model.modules())
    assert sum(isinstance(m, dynamic) for m in encoder.model.modules()) == 6 * 6 + 1
    assert not any(isinstance(m, dynamic) for m in fp32_encoder.model.modules())


def test_empty_directory_and_missing_directory(tmp_path: Path) -> None:
    empty = make_configmap_mount(tmp_path / "empty", {})
    kb = KnowledgeBase.load(empty, top_k=3)  # no encoder given: it would load MiniLM
    assert len(kb) == 0
    assert kb.encoder is None  # nothing to embed, so no model was loaded
    assert kb.search("how long does delivery take", 3) == []
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        KnowledgeBase.load(tmp_path / "does-not-exist")


def test_unicode_documents_and_queries(kb: KnowledgeBase) -> None:
    results = kb.search("ギフトカード 🎁 Café", 2)
    assert results[0].id == "cadeaux-café.md#1"
    assert results[0].title == "Cartes cadeaux 🎁"
    assert "ギフトカードは2年間有効です。" in results[0].text
    assert len(kb.search("\u200b\x00 ünïcødé", 2)) == 2


def test_long_documents_split_into_bounded_passages() -> None:
    sentence = "Parcels to islands may take two extra days because of ferry schedules. "
    text = "# Shipping\n" + sentence * 40 + "\n\n" + "word" * 500 + "\n\n# Short\nOne line."
    chunks = split_document(text, "long.md", max_chars=300)
    assert all(len(c.text) <= 300 for c in chunks)
    assert [c.title for c in chunks][-1] == "Short"
    assert sum(c.text.count("ferry") for c in chunks) == 40  # nothing lost at the cuts


def test_async_retriever_runs_off_the_event_loop(kb: KnowledgeBase) -> None:
    retriever = KnowledgeBaseRetriever(kb)

    async def scenario() -> tuple[list[Passage], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(retriever.search(q, 2) for q, _ in QUESTIONS))
        task.cancel()
        return [r[0] for r in results], ticks

    best, ticks = asyncio.run(scenario())
    assert [p.id.split("#")[0] for p in best] == [d for _, d in QUESTIONS]
    assert ticks > len(QUESTIONS)  # the loop kept running while queries were embedded
