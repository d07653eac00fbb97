"""Selection (cosine filter, exact and near duplicates) and hard negatives from the training miner."""

from __future__ import annotations

import numpy as np
import pytest

from embedforge.synthesis.prompts import STS_INSTRUCTION
from embedforge.synthesis.selection import add_negatives, filter_records, pair_cosines
from embedforge.training.mining import mine_hard_negatives


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    from embedforge import Embedder

    return Embedder.from_pretrained(minilm_dir)


def rec(query, positive, task="retrieval", instruction=None, negatives=()):
    return {
        "instruction": instruction,
        "query": query,
        "positive": positive,
        "negatives": list(negatives),
        "provenance": {"task": task, "doc_id": positive[:8]},
    }


PAIRS = [
    rec("how do coral reefs bleach", "Coral reefs bleach when warm water makes corals expel their algae."),
    rec("what powers a steam locomotive", "Steam locomotives turn the heat of burning coal into motion."),
    rec("best chocolate cake recipe", "The B-tree keeps database keys sorted and balanced."),  # a bad pair
    rec(
        "How do  CORAL reefs bleach", "coral reefs bleach when warm water makes corals expel their algae."
    ),  # exact dup
    rec(
        "how do coral reefs bleach?", "Coral reefs bleach when warm water makes corals expel their algae!"
    ),  # near dup
]


def test_cosine_filter_and_duplicates(minilm):
    cos, _ = pair_cosines(minilm, PAIRS)
    q = minilm.encode_queries([r["query"] for r in PAIRS])
    d = minilm.encode_documents([r["positive"] for r in PAIRS])
    np.testing.assert_allclose(cos, (q * d).sum(1), atol=1e-6)
    assert cos[2] < 0.3 < 0.6 < min(cos[0], cos[1])

    kept, report = filter_records(minilm, PAIRS, min_cos=0.5, near_dup=0.95)
    assert [r["query"] for r in kept] == [PAIRS[0]["query"], PAIRS[1]["query"]]
    assert (
        report.total,
        report.kept,
        report.low_cosine,
        report.exact_duplicates,
        report.near_duplicates,
    ) == (5, 2, 1, 1, 1)
    assert kept[0]["provenance"]["cos"] == pytest.approx(float(cos[0]), abs=1e-5)
    assert "cos" not in PAIRS[0]["provenance"]  # the input is not modified

    kept, report = filter_records(minilm, PAIRS, min_cos=0.5, near_dup=None)
    assert [r["query"] for r in kept] == [PAIRS[0]["query"], PAIRS[1]["query"], PAIRS[4]["query"]]
    kept, report = filter_records(minilm, PAIRS, min_cos=-1.0, near_dup=None)
    assert report.kept == 4 and report.exact_duplicates == 1


def test_each_record_is_scored_with_its_own_instruction(minilm):
    records = [
        rec("a coral reef", "Coral reefs bleach.", instruction=STS_INSTRUCTION),
        rec("a coral reef", "Coral reefs bleach."),
    ]
    cos, q = pair_cosines(minilm, records)
    np.testing.assert_allclose(
        q[0], minilm.encode_queries(["a coral reef"], instruction=STS_INSTRUCTION)[0], atol=1e-6
    )
    np.testing.assert_allclose(q[1], minilm.encode_queries(["a coral reef"])[0], atol=1e-6)
    _, bare = pair_cosines(minilm, records, use_instructions=False)
    np.testing.assert_allclose(bare, minilm.encode_queries(["a coral reef"] * 2), atol=1e-6)
    assert not np.allclose(q[0], bare[0], atol=1e-3)


def test_filter_rejects_bad_values(minilm):
    with pytest.raises(ValueError, match="min_cos must be in"):
        filter_records(minilm, PAIRS, min_cos=1.5)
    with pytest.raises(ValueError, match="near_dup must be in"):
        filter_records(minilm, PAIRS, near_dup=0.0)
    with pytest.raises(ValueError, match="record 0 needs string 'query' and 'positive'"):
        filter_records(minilm, [{"query": "x"}])


def test_negatives_reuse_the_training_miner_per_task(tiny_embedder):
    corpus = [f"passage number {i} about topic {i % 3}" for i in range(20)]
    retrieval = [rec(f"topic {i}", corpus[i]) for i in range(3)]
    sts = [
        rec(
            f"sentence {i}",
            f"paraphrase {i}",
            task="sts",
            instruction=STS_INSTRUCTION,
            negatives=[f"other {i}"],
        )
        for i in range(4)
    ]
    classification = [
        rec(
            "great movie",
            "positive",
            task="classification",
            instruction="Classify sentiment",
            negatives=["negative"],
        )
    ]
    records = [retrieval[0], sts[0], classification[0], retrieval[1], *sts[1:], retrieval[2]]
    out = add_negatives(tiny_embedder, records, corpus=corpus, k=3, skip_top=1)
    assert [r["query"] for r in out] == [r["query"] for r in records]

    expected_retrieval = mine_hard_negatives(tiny_embedder, retrieval, corpus, k=3, skip_top=1)
    expected_sts = mine_hard_negatives(tiny_embedder, sts, [r["positive"] for r in sts], k=3, skip_top=1)
    got = {r["query"]: r for r in out}
    for e in expected_retrieval:
        assert got[e["query"]]["negatives"] == e["negatives"] and len(e["negatives"]) == 3
        assert got[e["query"]]["positive"] not in e["negatives"]
        assert set(e["negatives"]) <= set(corpus)
    for s, e in zip(sts, expected_sts, strict=True):
        assert got[s["query"]]["negatives"] == s["negatives"] + e["negatives"]  # the LLM's negative first
        assert set(e["negatives"]) <= {r["positive"] for r in sts} - {s["positive"]}
    assert got["great movie"]["negatives"] == ["negative"]  # classification keeps its other labels

    no_corpus = add_negatives(tiny_embedder, retrieval, k=2, skip_top=0)  # pool: the records' positives
    for r in no_corpus:
        assert set(r["negatives"]) == {x["positive"] for x in retrieval} - {r["positive"]}
