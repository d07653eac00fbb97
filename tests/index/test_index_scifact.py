"""The published figure through the index: SciFact with the real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import json

import pytest

from embedforge import Embedder
from embedforge.evaluation.data import load_beir
from embedforge.evaluation.metrics import retrieval_scores
from embedforge.index import Index, evaluate_index, read_trec_run
from embedforge.index.cli import main

MTEB = {"ndcg@10": 64.51, "recall@100": 92.50, "mrr@10": 60.47}  # MTEB's SciFact figures for this model


@pytest.mark.slow
@pytest.mark.shared_data
def test_scifact_index_build_search_and_eval_give_mtebs_figures(tmp_path, minilm_dir, shared_data_dir):
    scifact = shared_data_dir / "scifact"
    emb = Embedder.from_pretrained(minilm_dir)
    Index.build(scifact / "corpus.jsonl", tmp_path / "ix", emb, show_progress=False)

    report = evaluate_index(tmp_path / "ix", scifact, embedder=emb)
    assert {k: round(100 * report["metrics"][k], 2) for k in MTEB} == MTEB
    assert report["n_queries"] == 300 and report["judged_documents_missing"] == 0

    # the command-line route: search --queries into a TREC run, scored by pytrec_eval
    data = load_beir(scifact)
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(
            json.dumps({"_id": q, "text": t}) + "\n"
            for q, t in zip(data.query_ids, data.query_texts, strict=True)
        )
    )
    run = tmp_path / "run.tsv"
    assert main(["search", str(tmp_path / "ix"), "--queries", str(queries), "-k", "100", "-o", str(run)]) == 0
    scores = retrieval_scores(data.qrels, read_trec_run(run), list(MTEB)).mean
    assert {k: round(100 * v, 2) for k, v in scores.items()} == MTEB
