"""Retrieval and similarity metrics, computed by well-kept libraries (pytrec_eval, scipy).

Retrieval metrics follow MTEB exactly: ``ndcg_cut``, ``map_cut``, ``recall`` and ``P`` of
pytrec_eval (trec_eval's definitions: linear gain for graded relevance, relevance level 1), and
MRR@k as pytrec_eval's ``recip_rank`` over the run cut to its top k in trec_eval's order (score
descending, ties by document id descending). Means are over the queries present in the run,
as in MTEB. Values are fractions in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Qrels = Mapping[str, Mapping[str, int]]  # query id -> {doc id: graded relevance}
Run = Mapping[str, Mapping[str, float]]  # query id -> {doc id: score}

DEFAULT_METRICS: tuple[str, ...] = (
    "ndcg@1",
    "ndcg@3",
    "ndcg@5",
    "ndcg@10",
    "ndcg@100",
    "map@100",
    "recall@10",
    "recall@100",
    "mrr@10",
    "p@10",
)

# our name -> pytrec_eval measure family; mrr is handled separately (cut run + recip_rank)
_TREC_FAMILY = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall", "p": "P"}
_METRIC_RE = re.compile(r"^(ndcg|map|recall|p|mrr)@([1-9][0-9]*)$")


@dataclass(frozen=True)
class MetricSpec:
    """One metric at one cutoff, e.g. ``ndcg@10``."""

    family: str  # ndcg | map | recall | p | mrr
    k: int

    @property
    def name(self) -> str:
        return f"{self.family}@{self.k}"


def parse_metric(name: str) -> MetricSpec:
    """Parse ``"ndcg@10"``-style names; families: ndcg, map, recall, p, mrr."""
    m = _METRIC_RE.match(name.strip().lower())
    if not m:
        raise ValueError(
            f"unknown metric {name!r}: use FAMILY@K with FAMILY in ndcg, map, recall, p, mrr (e.g. ndcg@10)"
        )
    return MetricSpec(m.group(1), int(m.group(2)))


@dataclass
class RetrievalScores:
    """Mean metrics over the evaluated queries, and each query's values."""

    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]
    n_queries: int


def drop_identical_ids(run: Run) -> dict[str, dict[str, float]]:
    """Remove every retrieved document whose id equals the query id (MTEB's ``ignore_identical_ids``)."""
    return {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}


def _trec_order(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """trec_eval's ranking: score descending, ties broken by document id descending."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def retrieval_scores(
    qrels: Qrels,
    run: Run,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    ignore_identical_ids: bool = False,
) -> RetrievalScores:
    """Evaluate ``run`` against graded ``qrels`` with pytrec_eval.

    >>> s = retrieval_scores({"q": {"a": 1}}, {"q": {"a": 0.9, "b": 0.8}}, ["ndcg@10", "mrr@10"])
    >>> s.mean["ndcg@10"], s.mean["mrr@10"]
    (1.0, 1.0)
    """
    import pytrec_eval

    specs = [parse_metric(m) for m in metrics]
    if not specs:
        raise ValueError("no metrics requested")
    if ignore_identical_ids:
        run = drop_identical_ids(run)
    qrels_plain = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    run_plain = {
        str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items() if q in qrels_plain
    }
    run_plain = {q: docs for q, docs in run_plain.items() if docs}  # pytrec_eval drops empty rankings too

    per_query: dict[str, dict[str, float]] = {q: {} for q in run_plain}
    trec_specs = [s for s in specs if s.family != "mrr"]
    if trec_specs:
        measures: dict[str, set[int]] = {}
        for s in trec_specs:
            measures.setdefault(_TREC_FAMILY[s.family], set()).add(s.k)
        names = {f"{fam}." + ",".join(str(k) for k in sorted(ks)) for fam, ks in measures.items()}
        result = pytrec_eval.RelevanceEvaluator(qrels_plain, names).evaluate(run_plain)
        for q, vals in result.items():
            for s in trec_specs:
                per_query[q][s.name] = float(vals[f"{_TREC_FAMILY[s.family]}_{s.k}"])
    for s in (s for s in specs if s.family == "mrr"):
        cut = {q: dict(_trec_order(docs)[: s.k]) for q, docs in run_plain.items()}
        result = pytrec_eval.RelevanceEvaluator(qrels_plain, {"recip_rank"}).evaluate(cut)
        for q, vals in result.items():
            per_query[q][s.name] = float(vals["recip_rank"])

    evaluated = {q: v for q, v in per_query.items() if v}
    mean = {
        s.name: float(np.mean([v[s.name] for v in evaluated.values()])) if evaluated else 0.0 for s in specs
    }
    return RetrievalScores(mean=mean, per_query=evaluated, n_queries=len(evaluated))


@dataclass
class Correlation:
    """Correlation of predicted similarities with gold scores."""

    spearman: float
    pearson: float
    n: int


def correlation(predicted: Sequence[float] | np.ndarray, gold: Sequence[float] | np.ndarray) -> Correlation:
    """Spearman and Pearson correlation (scipy) between predicted and gold scores."""
    from scipy.stats import pearsonr, spearmanr

    p, g = np.asarray(predicted, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if p.shape != g.shape or p.ndim != 1:
        raise ValueError(f"predicted {p.shape} and gold {g.shape} must be 1-D of equal length")
    if len(p) < 2:
        raise ValueError(f"need at least 2 pairs to correlate, got {len(p)}")
    return Correlation(
        spearman=float(spearmanr(p, g).statistic), pearson=float(pearsonr(p, g).statistic), n=len(p)
    )
