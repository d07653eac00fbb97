"""STS on the real STS-benchmark (reproduces MTEB's 82.03 for all-MiniLM-L6-v2), bitext on
Tatoeba, cross-lingual retrieval on the XQuAD-R pool."""

from __future__ import annotations

import numpy as np
import pytest

from embedforge.evaluation.bitext import evaluate_bitext, nearest_neighbour_accuracy
from embedforge.evaluation.crosslingual import evaluate_crosslingual, xquad_query_language
from embedforge.evaluation.data import BitextData, load_beir, load_bitext, load_sts_csv, subset_pairs
from embedforge.evaluation.sts import evaluate_sts

pytestmark = pytest.mark.shared_data


@pytest.mark.slow
def test_minilm_stsb_en_test_reproduces_mteb(minilm, stsb_dir):
    report = evaluate_sts(minilm, load_sts_csv(stsb_dir / "stsb-en-test.csv"), show_progress=False)
    assert report.n_pairs == 1379
    assert 100 * report.spearman == pytest.approx(82.03, abs=0.05)  # MTEB's published figure
    assert report.prompt == "" and report.instructions.source.value == "none"


def test_sts_qwen3_prompt_on_both_sides(tiny_embedder, stsb_dir):
    data = subset_pairs(load_sts_csv(stsb_dir / "stsb-en-test.csv"), range(20))
    report = evaluate_sts(tiny_embedder, data, dim=32, show_progress=False)
    assert report.prompt == "Instruct: Retrieve semantically similar text\nQuery:"
    assert report.instructions.query == report.instructions.document == "Retrieve semantically similar text"
    assert report.dim == 32 and -1.0 <= report.spearman <= 1.0


def test_sts_matryoshka_equals_direct_computation(minilm, stsb_dir, tmp_path):
    from scipy.stats import pearsonr, spearmanr

    data = subset_pairs(load_sts_csv(stsb_dir / "stsb-en-test.csv"), range(0, 1379, 14))
    report = evaluate_sts(minilm, data, dim=128, cache_dir=tmp_path, show_progress=False)
    a, b = minilm.encode(data.sentences1)[:, :128], minilm.encode(data.sentences2)[:, :128]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert report.spearman == pytest.approx(spearmanr(cos, data.scores).statistic, abs=1e-4)
    assert report.pearson == pytest.approx(pearsonr(cos, data.scores).statistic, abs=1e-4)
    full = evaluate_sts(minilm, data, cache_dir=tmp_path, show_progress=False)  # from the cache
    assert full.spearman != report.spearman


def test_nearest_neighbour_accuracy_by_hand():
    src = np.eye(3, dtype=np.float32)
    tgt = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0.1]], dtype=np.float32)  # rows 1 and 2 swapped
    assert nearest_neighbour_accuracy(src, tgt) == pytest.approx(1 / 3)


def test_bitext_tatoeba_subset(minilm, shared_data_dir):
    tat = shared_data_dir / "tatoeba" / "data" / "tatoeba" / "v1"
    full = load_bitext(tat / "tatoeba.fra-eng.fra", tat / "tatoeba.fra-eng.eng")
    n = 60
    data = BitextData("fra-eng", full.source[:n], full.target[:n])
    report = evaluate_bitext(minilm, data, show_progress=False)
    s, t = minilm.encode(data.source), minilm.encode(data.target)
    sim = s @ t.T  # (n, n)
    assert report.accuracy_source_to_target == pytest.approx(np.mean(sim.argmax(1) == np.arange(n)))
    assert report.accuracy_target_to_source == pytest.approx(np.mean(sim.argmax(0) == np.arange(n)))
    # an English-only model on French: weak, yet far above chance (1/60)
    assert report.accuracy_mean > 0.1
    assert report.instructions.source.value == "none"


def test_crosslingual_pool_subset(minilm, shared_data_dir):
    pool = load_beir(shared_data_dir / "xquad-r" / "pool", "test")
    # 6 questions in each of English and German with their 11 relevant sentences each, + 40 others
    keep = [q for q in pool.query_ids if q.endswith("-en")][:6] + [
        q for q in pool.query_ids if q.endswith("-de")
    ][:6]
    pool.query_ids, pool.query_texts = (
        keep,
        [dict(zip(pool.query_ids, pool.query_texts, strict=True))[q] for q in keep],
    )
    data = pool.subset(len(keep), extra_docs=40)
    report = evaluate_crosslingual(minilm, data, show_progress=False)
    assert set(report.per_language) == {"en", "de"}
    assert all(m["n_queries"] == 6 for m in report.per_language.values())
    overall = report.retrieval.first_stage.metrics
    for name in ("map@100", "ndcg@10"):
        assert overall[name] == pytest.approx(
            np.mean([report.per_language[lang][name] for lang in ("en", "de")])
        )
    assert 0.1 < overall["ndcg@10"] <= 1.0  # a real model on real data, not noise
    assert "per_query_language" in report.to_dict()
    with pytest.raises(ValueError, match="no '-<language>' suffix"):
        xquad_query_language("q17")
