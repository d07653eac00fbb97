"""Retrieval evaluation on real SciFact subsets: equal to the reference recipe, cache reuse,
Matryoshka sweep, and the full retrieve -> rerank path with tiny random Qwen3 models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedforge import prompts
from embedforge.evaluation.data import load_beir
from embedforge.evaluation.metrics import DEFAULT_METRICS
from embedforge.evaluation.retrieval import evaluate_retrieval

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def scifact_small(scifact_dir):
    return load_beir(scifact_dir, "test").subset(10, extra_docs=40)


def reference_metrics(qrels, query_emb, doc_emb, query_ids, doc_ids, k=100):
    """MTEB's recipe: full score matrix, top-k per query, pytrec_eval measures, MRR by hand."""
    import pytrec_eval

    scores = query_emb @ doc_emb.T  # (n_query, n_doc)
    run = {}
    for i, q in enumerate(query_ids):
        top = np.argsort(-scores[i], kind="stable")[:k]
        run[q] = {doc_ids[j]: float(scores[i, j]) for j in top}
    ev = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut.1,3,5,10,100", "map_cut.100", "recall.10,100", "P.10"}
    )
    res = ev.evaluate(run)
    mean = lambda key: float(np.mean([v[key] for v in res.values()]))  # noqa: E731
    out = {f"ndcg@{k}": mean(f"ndcg_cut_{k}") for k in (1, 3, 5, 10, 100)}
    out |= {
        "map@100": mean("map_cut_100"),
        "recall@10": mean("recall_10"),
        "recall@100": mean("recall_100"),
        "p@10": mean("P_10"),
    }
    rr = []
    for q, docs in run.items():
        ranked = sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)[:10]
        rr.append(next((1 / (r + 1) for r, (d, _) in enumerate(ranked) if qrels[q].get(d, 0) > 0), 0.0))
    out["mrr@10"] = float(np.mean(rr))
    return out


def test_minilm_matches_reference_recipe_and_cache(minilm, minilm_dir, scifact_small, tmp_path):
    from sentence_transformers import SentenceTransformer

    data = scifact_small
    report = evaluate_retrieval(minilm, data, cache_dir=tmp_path, dims=[64, 384], show_progress=False)
    assert (
        report.instructions.source.value == "none"
        and report.query_prompt == ""
        and report.document_prompt == ""
    )
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    ref = reference_metrics(
        data.qrels,
        st.encode(data.query_texts, normalize_embeddings=True),
        st.encode(data.corpus_texts, normalize_embeddings=True),
        data.query_ids,
        data.corpus_ids,
    )
    assert set(report.first_stage.metrics) == set(DEFAULT_METRICS)
    for name, value in ref.items():
        assert report.first_stage.metrics[name] == pytest.approx(value, abs=2e-4), name
    assert report.first_stage.metrics["ndcg@10"] > 0.5  # a real model on real data, not noise

    # the sweep re-uses the same vectors: the full dimension equals the first stage
    assert [s.dim for s in report.dims] == [64, 384]
    assert report.dims[1].metrics == report.first_stage.metrics
    assert report.dims[0].metrics["ndcg@10"] != report.first_stage.metrics["ndcg@10"]

    again = evaluate_retrieval(minilm, data, cache_dir=tmp_path, show_progress=False)
    assert again.cache["corpus_hit"] and again.cache["queries_hit"] and not report.cache["corpus_hit"]
    assert again.first_stage.metrics == report.first_stage.metrics
    json.dumps(report.to_dict(), allow_nan=False)


def test_tiny_qwen3_retrieve_then_rerank(tiny_embedder, tiny_reranker, scifact_dir, tmp_path):
    data = load_beir(scifact_dir, "test").subset(4, extra_docs=24)
    report = evaluate_retrieval(
        tiny_embedder,
        data,
        reranker=tiny_reranker,
        rerank_top=8,
        top_k=20,
        dims=[32, 48, 64],  # Matryoshka dims run from MIN_DIM (32) to the hidden size (64)
        cache_dir=tmp_path,
        show_progress=False,
    )
    official = prompts.QWEN3_RETRIEVAL_INSTRUCTIONS["SciFact"]
    assert report.task == "SciFact" and report.instructions.source.value == "official"
    assert report.query_prompt == prompts.query_prompt(official) and report.document_prompt == ""
    assert report.rerank_instruction == official
    assert report.first_stage.name == "embedding" and report.rerank is not None
    assert report.rerank.name == "rerank@8" and report.rerank.n_queries == 4
    assert [s.dim for s in report.dims] == [32, 48, 64]
    # both stages are in the JSON report, with timings
    d = json.loads(json.dumps(report.to_dict()))
    assert set(d["rerank"]["metrics"]) == set(d["first_stage"]["metrics"]) == set(DEFAULT_METRICS)
    assert {"encode_corpus_s", "encode_queries_s", "search_s", "rerank_s"} <= set(d["timings"])

    # the reranked run holds the reranker's own scores for each query's first-stage top 8
    q0 = data.query_ids[0]
    first = sorted(report.first_stage_run[q0].items(), key=lambda x: (x[1], x[0]), reverse=True)[:8]
    top_ids = [doc for doc, _ in first]
    assert set(report.rerank_run[q0]) == set(top_ids)
    texts = dict(zip(data.corpus_ids, data.corpus_texts, strict=True))
    direct = tiny_reranker.score(data.query_texts[0], [texts[i] for i in top_ids], official)
    np.testing.assert_allclose([report.rerank_run[q0][i] for i in top_ids], direct, atol=1e-5)

    # the first stage equals a direct encode + exact dot products with the official prompt
    q = tiny_embedder.encode(data.query_texts[:1], prompt=prompts.query_prompt(official))
    c = tiny_embedder.encode(data.corpus_texts)
    s = (q @ c.T)[0]
    for doc, score in first:
        assert score == pytest.approx(float(s[data.corpus_ids.index(doc)]), abs=1e-5)


def test_user_instruction_and_bad_arguments(tiny_embedder, scifact_dir):
    data = load_beir(scifact_dir, "test").subset(2, extra_docs=5)
    r = evaluate_retrieval(tiny_embedder, data, instruction="Find abstracts", top_k=5, show_progress=False)
    assert r.query_prompt == "Instruct: Find abstracts\nQuery:" and r.instructions.source.value == "user"
    with pytest.raises(ValueError, match="dim=65 is out of range"):
        evaluate_retrieval(tiny_embedder, data, dims=[65], show_progress=False)
    with pytest.raises(ValueError, match="dim=16 is out of range: Matryoshka dims must be between 32 and 64"):
        evaluate_retrieval(tiny_embedder, data, dims=[16], show_progress=False)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        evaluate_retrieval(tiny_embedder, data, top_k=0, show_progress=False)


def test_ignore_identical_ids(minilm, tmp_path):
    """A corpus that contains the queries themselves: without the flag each query finds itself first."""
    from embedforge.evaluation.data import RetrievalData

    docs = [
        "Cats are small felines.",
        "The stock market fell today.",
        "Felines such as cats purr.",
        "Shares dropped sharply.",
    ]
    data = RetrievalData(
        name="toy",
        corpus_ids=["a", "b", "c", "d"],
        corpus_texts=docs,
        query_ids=["a", "b"],
        query_texts=docs[:2],
        qrels={"a": {"c": 1}, "b": {"d": 1}},
    )
    plain = evaluate_retrieval(minilm, data, top_k=3, show_progress=False)
    ignored = evaluate_retrieval(minilm, data, top_k=3, ignore_identical_ids=True, show_progress=False)
    assert plain.first_stage.metrics["mrr@10"] == pytest.approx(0.5)  # itself first, then its pair
    assert ignored.first_stage.metrics["mrr@10"] == pytest.approx(1.0)
    assert all(q not in docs_ for q, docs_ in ignored.first_stage_run.items())
    assert all(len(d) == 3 for d in ignored.first_stage_run.values())


def test_changed_checkpoint_invalidates_the_corpus_cache(
    tiny_embedder, qwen3_tokenizer_dir, scifact_dir, tmp_path
):
    from embedforge import Embedder
    from embedforge.testing import make_random_qwen3

    data = load_beir(scifact_dir, "test").subset(2, extra_docs=6)
    first = evaluate_retrieval(
        tiny_embedder, data, cache_dir=tmp_path / "cache", top_k=5, show_progress=False
    )
    other_dir = make_random_qwen3(
        tmp_path / "other", qwen3_tokenizer_dir, seed=7, append_eos=True, sentence_transformers=True
    )
    other = Embedder.from_pretrained(other_dir, max_length=128)
    assert other.fingerprint != tiny_embedder.fingerprint
    second = evaluate_retrieval(other, data, cache_dir=tmp_path / "cache", top_k=5, show_progress=False)
    assert not second.cache["corpus_hit"]
    assert second.cache["corpus_entry"] != first.cache["corpus_entry"]
    # the same model with a longer max length is another entry too
    longer = Embedder.from_pretrained(other_dir, max_length=256)
    third = evaluate_retrieval(longer, data, cache_dir=tmp_path / "cache", top_k=5, show_progress=False)
    assert not third.cache["corpus_hit"]
