"""The NLU decision cache of each orchestrator replica: least recently used entries go first,
case and spacing are folded (the encoder is uncased), slots always come from the message as
written, and the real model's decisions are the same with and without the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.serving.config import NluConfig
from switchboard.serving.nlu_service import Decision, DecisionCache, NluService, cache_key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Where is my order?", "where is my order?"),
        ("  where   IS my\torder?\n", "where is my order?"),
        ("STRASSE", "strasse"),
    ],
)
def test_cache_key_folds_case_and_spacing(text: str, key: str) -> None:
    assert cache_key(text) == key


def test_least_recently_used_goes_first() -> None:
    cache = DecisionCache(2)
    a, b, c = (Decision(i, 0.9, False) for i in "abc")
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") == a  # a is now the most recently used
    cache.put("c", c)
    assert cache.get("b") is None and cache.get("a") == a and cache.get("c") == c
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)


def test_size_zero_keeps_nothing() -> None:
    cache = DecisionCache(0)
    cache.put("a", Decision("a", 1.0, False))
    assert len(cache) == 0


def test_cached_decisions_match_the_model_and_slots_stay_per_message(
    demo_nlu_model: Path,
) -> None:
    cached = NluService(NluConfig(model_path=str(demo_nlu_model), revision="r", cache_size=8))
    plain = NluService(NluConfig(model_path=str(demo_nlu_model), revision="r"))
    first = ["Where is my order ORD-10001?", "hi there", "Where is my order ORD-10001?"]
    again = ["where is my order ord-10001?", "WHERE IS MY  ORDER ORD-20002?", "hi there"]
    out = cached.classify(first) + cached.classify(again)
    reference = plain.classify(first + again)
    for got, want in zip(out, reference, strict=True):
        assert got["intent"] == want["intent"] and got["is_oos"] == want["is_oos"]
        # int8 dynamic quantization scales activations per batch: the same message scores a
        # little differently beside other messages, cached or not.
        assert got["confidence"] == pytest.approx(want["confidence"], abs=0.01)
    # The repeated message of the first batch ran through the model once; of the second, only
    # the message with another order number did.
    assert (cached.cache.hits, cached.cache.misses) == (2, 3)
    # Slots come from each message as written, not from the one that filled the cache.
    assert out[3]["slots"] == reference[3]["slots"]
    assert out[4]["slots"] == reference[4]["slots"] != out[0]["slots"]
    assert plain.cache.hits == plain.cache.misses == 0  # cacheSize 0: no lookups at all
