"""Cross-lingual retrieval over a multilingual pool (XQuAD-R / LAReQA): every question against the
sentences of all languages; mAP and nDCG@10 overall and per query language.

LAReQA reports mAP over the whole pool; here it is MAP@100 (``map_cut.100`` of trec_eval), which
equals it whenever all 11 relevant sentences of a question rank in its top 100 and is below it
otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedforge.evaluation.data import RetrievalData
from embedforge.evaluation.encoding import EncoderLike
from embedforge.evaluation.metrics import retrieval_scores
from embedforge.evaluation.retrieval import RetrievalReport, evaluate_retrieval

CROSSLINGUAL_METRICS: tuple[str, ...] = ("map@100", "ndcg@10", "recall@100", "mrr@10")


def xquad_query_language(query_id: str) -> str:
    """XQuAD-R query ids end with their language: ``56beb4343aeaaa14008c925b-ar`` -> ``ar``."""
    if "-" not in query_id:
        raise ValueError(f"query id {query_id!r} has no '-<language>' suffix (XQuAD-R pool layout)")
    return query_id.rsplit("-", 1)[1]


@dataclass
class CrosslingualReport:
    """Overall retrieval report plus metrics per query language."""

    retrieval: RetrievalReport
    per_language: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.retrieval.to_dict(), "per_query_language": self.per_language}


def evaluate_crosslingual(
    embedder: EncoderLike,
    data: RetrievalData,
    *,
    instruction: str | None = None,
    task: str | None = None,
    metrics: Sequence[str] = CROSSLINGUAL_METRICS,
    language_of: Callable[[str], str] = xquad_query_language,
    cache_dir: str | Path | None = None,
    dims: Sequence[int] = (),
    show_progress: bool = True,
) -> CrosslingualReport:
    """Evaluate retrieval over the pool and break the metrics down by the language of the query."""
    report = evaluate_retrieval(
        embedder,
        data,
        task=task,
        instruction=instruction,
        metrics=metrics,
        cache_dir=cache_dir,
        dims=dims,
        top_k=100,
        show_progress=show_progress,
    )
    assert report.first_stage_run is not None
    groups: dict[str, list[str]] = {}
    for q in data.query_ids:
        groups.setdefault(language_of(q), []).append(q)
    per_language = {}
    for lang, qids in sorted(groups.items()):
        scores = retrieval_scores(
            {q: data.qrels[q] for q in qids}, {q: report.first_stage_run[q] for q in qids}, metrics
        )
        per_language[lang] = {**scores.mean, "n_queries": scores.n_queries}
    return CrosslingualReport(retrieval=report, per_language=per_language)
