"""Metric code against values computed by hand on toy qrels (graded relevance included)."""

from __future__ import annotations

import math

import pytest

from embedforge.evaluation.metrics import correlation, parse_metric, retrieval_scores

# q1 judges d1 highly relevant (2), d2 relevant (1), d3 judged not relevant (0); q2 judges d4.
QRELS = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d4": 1}}
# q1 ranks d2 (0.9), d3 (0.8), d5 (0.7), d1 (0.5); q2 ranks d5 (0.9), d4 (0.1)
RUN = {"q1": {"d1": 0.5, "d2": 0.9, "d5": 0.7, "d3": 0.8}, "q2": {"d5": 0.9, "d4": 0.1}}

L2_3, L2_5 = math.log2(3), math.log2(5)
IDCG_Q1 = 2 + 1 / L2_3  # ideal order d1 (2), d2 (1)


def test_ndcg_uses_linear_graded_gain():
    s = retrieval_scores(QRELS, RUN, ["ndcg@1", "ndcg@3", "ndcg@10"])
    q1 = s.per_query["q1"]
    assert q1["ndcg@1"] == pytest.approx(1 / 2)  # d2 (gain 1) at rank 1; ideal d1 (gain 2)
    assert q1["ndcg@3"] == pytest.approx(1 / IDCG_Q1)
    assert q1["ndcg@10"] == pytest.approx((1 + 2 / L2_5) / IDCG_Q1)  # d1 at rank 4
    assert s.per_query["q2"]["ndcg@10"] == pytest.approx(1 / L2_3)  # d4 at rank 2
    assert s.mean["ndcg@10"] == pytest.approx(((1 + 2 / L2_5) / IDCG_Q1 + 1 / L2_3) / 2)
    assert s.n_queries == 2


def test_map_recall_precision_mrr_by_hand():
    s = retrieval_scores(QRELS, RUN, ["map@10", "map@3", "recall@2", "recall@10", "p@2", "mrr@10", "mrr@1"])
    assert s.per_query["q1"]["map@10"] == pytest.approx((1 / 1 + 2 / 4) / 2)  # relevant at ranks 1 and 4
    assert s.per_query["q1"]["map@3"] == pytest.approx(1 / 2)  # only rank 1 inside the cut, / 2 relevant
    assert s.mean["map@10"] == pytest.approx((0.75 + 0.5) / 2)
    assert s.per_query["q1"]["recall@2"] == pytest.approx(1 / 2)
    assert s.mean["recall@2"] == pytest.approx(0.75)
    assert s.mean["recall@10"] == pytest.approx(1.0)
    assert s.mean["p@2"] == pytest.approx(0.5)
    assert s.mean["mrr@10"] == pytest.approx((1 + 1 / 2) / 2)
    assert s.mean["mrr@1"] == pytest.approx(0.5)


def test_ties_follow_trec_eval_order():
    # equal scores: trec_eval (and MTEB) rank the larger document id first
    s = retrieval_scores({"q": {"a": 1}}, {"q": {"a": 0.5, "b": 0.5}}, ["mrr@10", "ndcg@1"])
    assert s.mean["mrr@10"] == pytest.approx(0.5)
    assert s.mean["ndcg@1"] == 0.0


def test_mrr_cut_drops_hits_below_k():
    s = retrieval_scores({"q": {"z": 1}}, {"q": {"a": 0.9, "b": 0.8, "z": 0.7}}, ["mrr@2", "mrr@3"])
    assert s.mean["mrr@2"] == 0.0
    assert s.mean["mrr@3"] == pytest.approx(1 / 3)


def test_ignore_identical_ids():
    qrels, run = {"x": {"y": 1}}, {"x": {"x": 0.9, "y": 0.8}}
    assert retrieval_scores(qrels, run, ["mrr@10"]).mean["mrr@10"] == pytest.approx(0.5)
    assert retrieval_scores(qrels, run, ["mrr@10"], ignore_identical_ids=True).mean[
        "mrr@10"
    ] == pytest.approx(1.0)


def test_queries_without_results_are_not_averaged_as_mteb_does():
    s = retrieval_scores({"q1": {"a": 1}, "q2": {"b": 1}}, {"q1": {"a": 1.0}}, ["ndcg@10"])
    assert s.n_queries == 1 and s.mean["ndcg@10"] == 1.0


@pytest.mark.parametrize("bad", ["ndcg", "ndcg@0", "bleu@10", "ndcg@-1", "recall@x"])
def test_bad_metric_name_is_refused(bad):
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metric(bad)


def test_correlation():
    c = correlation([0.1, 0.4, 0.3, 0.9], [1.0, 2.0, 3.0, 4.0])
    assert c.spearman == pytest.approx(0.8)  # rank differences (0, 1, -1, 0): 1 - 6*2/(4*15)
    # deviations from the means 0.425 and 2.5: cov sum 1.15, squares 0.3475 and 5
    assert c.pearson == pytest.approx(1.15 / math.sqrt(0.3475 * 5))
    with pytest.raises(ValueError, match="equal length"):
        correlation([0.1, 0.2], [1.0])
