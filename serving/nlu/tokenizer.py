"""Fast tokenization with the `tokenizers` library (about 20 µs a query; no transformers import)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


class Tokenizer:
    """A WordPiece tokenizer read from a `tokenizer.json`, truncating to `max_length` tokens."""

    def __init__(self, path: str | Path, max_length: int) -> None:
        from tokenizers import Tokenizer as _Tokenizer

        self.max_length = max_length
        self._tok = _Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, unpadded ([CLS] ... [SEP])."""
        return [list(e.ids) for e in self._tok.encode_batch(list(texts))]

    def __call__(self, texts: Sequence[str]) -> tuple[IntArray, IntArray]:
        """(input_ids, attention_mask), padded to the longest text of the batch."""
        return pad(self.ids(texts))


def pad(batch: Sequence[Sequence[int]]) -> tuple[IntArray, IntArray]:
    width = max((len(ids) for ids in batch), default=0)
    input_ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for i, ids in enumerate(batch):
        input_ids[i, : len(ids)] = ids
        mask[i, : len(ids)] = 1
    return input_ids, mask
