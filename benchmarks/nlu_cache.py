"""The orchestrator replica's NLU decision cache on a realistic repeat mix: hit rate by cache
size and the NLU time per message with and without it, side by side in one run. Prints JSON.

The mix: support traffic repeats a head of short phrasings ("where is my order", "hi",
"refund") and has a long tail of messages seen once. Here the head is the demo intents'
407 phrasings (examples/nlu/ecommerce-intents.csv) drawn by a Zipf law over a random ranking
(s = 1.1), a third of them retyped with other case and spacing as people do; the tail is
Banking77's test queries, each used once (../shared/data/banking77, or --tail CSV with a `text`
column). `--tail-share` sets the tail's part of the stream (default 0.4).

    .venv/bin/python -P benchmarks/nlu_cache.py --nlu-model DIR [--messages 5000] [--json-out F]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from pathlib import Path
from typing import Any

# The helpers the test suite uses (tests/support): tests/ goes on the path, never the repository
# root, whose operator/ would shadow the stdlib module (hence `python -P` too).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.paths import REPO_ROOT as REPO
from support.paths import SHARED_DIR as SHARED
from support.report import emit, run_facts
from switchboard.serving.config import NluConfig
from switchboard.serving.nlu_service import NluService

BATCH = 8  # turns in flight that one NLU batch takes, a busy replica's typical batch


def read_texts(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f) if row.get("text")]


def retyped(text: str, rng: random.Random) -> str:
    """The same words as a person might type them again: other case, extra spaces."""
    words = text.split()
    style = rng.choice([str.upper, str.capitalize, str.lower])
    return ("  " if rng.random() < 0.5 else " ").join(style(w) for w in words) + rng.choice(
        ["", " ", "\n"]
    )


def stream(head: list[str], tail: list[str], n: int, tail_share: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    ranked = head[:]
    rng.shuffle(ranked)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(ranked))]
    tail_left = tail[:]
    rng.shuffle(tail_left)
    out = []
    for _ in range(n):
        if tail_left and rng.random() < tail_share:
            out.append(tail_left.pop())
            continue
        text = rng.choices(ranked, weights)[0]
        out.append(retyped(text, rng) if rng.random() < 1 / 3 else text)
    return out


def run(model: Path, messages: list[str], size: int) -> dict[str, Any]:
    service = NluService(NluConfig(model_path=str(model), revision="bench", cache_size=size))
    started = time.perf_counter()
    for i in range(0, len(messages), BATCH):
        service.classify(messages[i : i + BATCH])
    seconds = time.perf_counter() - started
    lookups = service.cache.hits + service.cache.misses
    return {
        "cache_size": size,
        "hit_rate": round(service.cache.hits / lookups, 3) if lookups else None,
        "ms_per_message": round(1000 * seconds / len(messages), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nlu-model", type=Path, required=True)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--tail-share", type=float, default=0.4)
    parser.add_argument("--tail", type=Path, default=SHARED / "data" / "banking77" / "test.csv")
    parser.add_argument("--sizes", default="0,256,1024,4096")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    head = read_texts(REPO / "examples" / "nlu" / "ecommerce-intents.csv")
    tail = read_texts(args.tail)
    messages = stream(head, tail, args.messages, args.tail_share, seed=7)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"cache size {size} ...", file=sys.stderr, flush=True)
        rows.append(run(args.nlu_model, messages, size))
    result = {
        **run_facts(),
        "messages": len(messages),
        "distinct_folded": len({" ".join(m.casefold().split()) for m in messages}),
        "distinct_exact": len(set(messages)),
        "tail_share": args.tail_share,
        "batch": BATCH,
        "rows": rows,
    }
    emit(result, args.json_out)


if __name__ == "__main__":
    main()
