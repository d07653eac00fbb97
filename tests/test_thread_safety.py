"""One Embedder and one Reranker shared by 8 threads give exactly the sequential results.

The models share their tokenizer with copies of different max lengths (as the server engine and
the host program share one loaded model), so truncation settings change between calls: a fast
tokenizer used unguarded raises "Already borrowed" or returns another call's truncation.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embedforge import Embedder, Reranker
from texts import DOCUMENTS, QUERIES

THREADS = 8
ROUNDS = 3
LONG = [" ".join(f"w{i}" for i in range(n)) for n in (30, 200, 700)]


@pytest.fixture(scope="module")
def emb(tiny_embedder_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_embedder_dir)


@pytest.fixture(scope="module")
def rr(tiny_reranker_dir) -> Reranker:
    return Reranker.from_pretrained(tiny_reranker_dir)


def tasks(emb: Embedder, rr: Reranker) -> dict:
    short = Embedder(emb.model, emb.tokenizer, pooling=emb.pooling, prompt_table=emb.prompts, max_length=12)
    rr_short = Reranker(rr.model, rr.tokenizer, max_length=90)
    assert short.tokenizer_lock is emb.tokenizer_lock and rr_short.tokenizer_lock is rr.tokenizer_lock
    pairs = [(QUERIES[1], d) for d in DOCUMENTS[:6]] + [(LONG[1], d) for d in LONG]
    return {
        "embed documents": lambda: emb.encode_documents(DOCUMENTS + LONG),
        "embed queries, max_length 12": lambda: short.encode_queries(QUERIES + LONG),
        "tokenize, max_length 12": lambda: short.tokenize(LONG + DOCUMENTS),
        "tokenize, max_length 8192": lambda: emb.tokenize(LONG),
        "raw ids, no truncation": lambda: emb.raw_ids(LONG + QUERIES),
        "rerank": lambda: rr.score(QUERIES[0], DOCUMENTS[:8] + LONG[:2]),
        "rerank pairs, max_length 90": lambda: rr_short.score_pairs(pairs),
        "tokenize pairs, max_length 90": lambda: rr_short.tokenize_pairs(pairs),
    }


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))
    return a == b


def test_shared_models_under_8_threads_equal_sequential_calls(emb, rr):
    work = tasks(emb, rr)
    expected = {name: fn() for name, fn in work.items()}
    assert all(len(x) <= 12 for x in expected["tokenize, max_length 12"])
    assert max(len(x) for x in expected["raw ids, no truncation"]) > 700  # never truncated
    rng = random.Random(0)
    schedule = [name for _ in range(ROUNDS) for name in work]
    rng.shuffle(schedule)
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [(name, pool.submit(work[name])) for name in schedule]
        results = [(name, f.result()) for name, f in futures]
    wrong = [name for name, got in results if not same(got, expected[name])]
    assert not wrong, f"results differ from sequential calls: {sorted(set(wrong))}"
