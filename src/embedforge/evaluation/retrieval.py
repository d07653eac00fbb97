"""Retrieval evaluation: embed, exact top-k search, optional reranking, metrics, Matryoshka sweep.

The corpus is encoded once at full dimension (and cached on disk); every ``dims`` value is a
truncation of the same vectors, re-normalised. Search is :func:`embedforge.search.exact_search`
(chunked, never a queries x corpus matrix). With a reranker, the first stage's top
``rerank_top`` documents of every query are scored by the reranker and both stages are reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedforge.evaluation.data import RetrievalData
from embedforge.evaluation.encoding import EncoderLike, encode_side, side_prompt, truncate_normalize
from embedforge.evaluation.instructions import (
    InstructionChoice,
    TaskKind,
    choose_instructions,
    is_instruction_aware,
)
from embedforge.evaluation.metrics import DEFAULT_METRICS, RetrievalScores, Run, retrieval_scores
from embedforge.inputs import check_dim
from embedforge.prompts import DEFAULT_RERANK_INSTRUCTION
from embedforge.search import exact_search
from embedforge.store import EmbeddingStore


class RerankerLike(Protocol):
    """What evaluation needs of :class:`embedforge.Reranker`."""

    fingerprint: str

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], instruction: str | None = None, *, show_progress: bool = False
    ) -> np.ndarray: ...


@dataclass
class StageReport:
    """Metrics of one ranking stage."""

    name: str
    metrics: dict[str, float]
    n_queries: int
    dim: int | None = None


@dataclass
class RetrievalReport:
    """Everything one retrieval evaluation measured; ``to_dict`` gives the JSON report."""

    task: str | None
    data: str
    split: str
    model: str
    n_queries: int
    n_documents: int
    instructions: InstructionChoice
    query_prompt: str
    document_prompt: str
    first_stage: StageReport
    dims: list[StageReport] = field(default_factory=list)
    rerank: StageReport | None = None
    reranker: str | None = None
    rerank_instruction: str | None = None
    top_k: int = 100
    ignore_identical_ids: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    # the first-stage and reranked runs ({qid: {doc_id: score}}), kept out of the JSON report
    first_stage_run: dict[str, dict[str, float]] | None = field(default=None, repr=False)
    rerank_run: dict[str, dict[str, float]] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("first_stage_run")
        d.pop("rerank_run")
        d["instructions"] = self.instructions.to_dict()
        return d


def run_from_search(
    query_ids: Sequence[str], corpus_ids: Sequence[str], scores: np.ndarray, indices: np.ndarray
) -> dict[str, dict[str, float]]:
    """Turn top-k (scores, corpus row indices), each (n_query, k), into a ``{qid: {doc_id: score}}`` run."""
    return {
        q: {corpus_ids[j]: float(s) for j, s in zip(indices[i].tolist(), scores[i].tolist(), strict=True)}
        for i, q in enumerate(query_ids)
    }


def _top_docs(run: Run, n: int) -> dict[str, list[str]]:
    """Each query's ``n`` best documents of ``run`` (score descending, ties by id as trec_eval)."""
    out = {}
    for q, docs in run.items():
        ranked = sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)
        out[q] = [d for d, _ in ranked[:n]]
    return out


def rerank_run(
    reranker: RerankerLike,
    data: RetrievalData,
    first_stage: Run,
    *,
    top: int,
    instruction: str | None,
    show_progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Score each query's ``top`` first-stage documents with the reranker; returns the reranked run."""
    if top < 1:
        raise ValueError(f"rerank_top must be >= 1, got {top}")
    query_text = dict(zip(data.query_ids, data.query_texts, strict=True))
    doc_text = dict(zip(data.corpus_ids, data.corpus_texts, strict=True))
    candidates = _top_docs(first_stage, top)
    keys = [(q, d) for q, docs in candidates.items() for d in docs]
    pairs = [(query_text[q], doc_text[d]) for q, d in keys]
    scores = reranker.score_pairs(pairs, instruction, show_progress=show_progress) if pairs else np.zeros(0)
    run: dict[str, dict[str, float]] = {q: {} for q in candidates}
    for (q, d), s in zip(keys, np.asarray(scores, dtype=np.float64).tolist(), strict=True):
        run[q][d] = s
    return run


def _stage(name: str, scores: RetrievalScores, dim: int | None = None) -> StageReport:
    return StageReport(name=name, metrics=scores.mean, n_queries=scores.n_queries, dim=dim)


def evaluate_retrieval(
    embedder: EncoderLike,
    data: RetrievalData,
    *,
    split: str = "test",
    task: str | None = None,
    instruction: str | None = None,
    dims: Sequence[int] = (),
    reranker: RerankerLike | None = None,
    rerank_top: int = 100,
    rerank_instruction: str | None = None,
    top_k: int = 100,
    ignore_identical_ids: bool = False,
    cache_dir: str | Path | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    show_progress: bool = True,
) -> RetrievalReport:
    """Evaluate ``embedder`` (and optionally ``reranker`` on its top ``rerank_top``) on ``data``.

    ``task`` picks the official Qwen3 instruction (default: the data's name); ``instruction``
    overrides it. ``top_k`` documents are retrieved per query (one more with
    ``ignore_identical_ids``, since the query's own id is dropped afterwards, as MTEB does).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if reranker is not None and rerank_top > top_k:
        raise ValueError(f"rerank_top ({rerank_top}) cannot exceed top_k ({top_k})")
    choice = choose_instructions(
        task or data.name,
        TaskKind.RETRIEVAL,
        instruction_aware=is_instruction_aware(embedder),
        user_instruction=instruction,
    )
    q_prompt = side_prompt(embedder, choice.query, query_side=True)
    d_prompt = side_prompt(embedder, choice.document, query_side=False)
    cache = EmbeddingStore(cache_dir) if cache_dir is not None else None
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    corpus = encode_side(
        embedder, data.corpus_texts, d_prompt, cache=cache, desc="corpus", show_progress=show_progress
    )
    timings["encode_corpus_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    queries = encode_side(
        embedder, data.query_texts, q_prompt, cache=cache, desc="queries", show_progress=show_progress
    )
    timings["encode_queries_s"] = time.perf_counter() - t0

    k = min(top_k + (1 if ignore_identical_ids else 0), len(data.corpus_ids))
    full_dim = int(corpus.embeddings.shape[1])
    for d in dims:
        check_dim(d, full_dim)  # the library's one Matryoshka rule

    normalized = bool(getattr(embedder, "normalize", False))  # the Embedder L2-normalises its output

    def search_at(dim: int | None) -> dict[str, dict[str, float]]:
        hits = exact_search(
            truncate_normalize(queries.embeddings, dim, normalized=normalized),
            truncate_normalize(corpus.embeddings, dim, normalized=normalized),
            k,
        )
        run = run_from_search(data.query_ids, data.corpus_ids, hits.scores, hits.indices)
        if ignore_identical_ids:  # drop the query's own id, then keep top_k, as MTEB does
            run = {q: dict(_top_pairs(docs, top_k, exclude=q)) for q, docs in run.items()}
        return run

    t0 = time.perf_counter()
    first_run = search_at(None)
    timings["search_s"] = time.perf_counter() - t0
    first = _stage("embedding", retrieval_scores(data.qrels, first_run, metrics), dim=full_dim)

    dim_reports = []
    t0 = time.perf_counter()
    for d in sorted(set(dims)):
        run = first_run if d == full_dim else search_at(d)
        dim_reports.append(_stage(f"embedding@{d}", retrieval_scores(data.qrels, run, metrics), dim=d))
    if dims:
        timings["dims_search_s"] = time.perf_counter() - t0

    rerank_report = None
    r_instr = None
    reranked = None
    if reranker is not None:
        r_instr = rerank_instruction or (
            choice.query if choice.query is not None else DEFAULT_RERANK_INSTRUCTION
        )
        t0 = time.perf_counter()
        reranked = rerank_run(
            reranker, data, first_run, top=rerank_top, instruction=r_instr, show_progress=show_progress
        )
        timings["rerank_s"] = time.perf_counter() - t0
        rerank_report = _stage(f"rerank@{rerank_top}", retrieval_scores(data.qrels, reranked, metrics))
    timings["encode_corpus_compute_s"] = corpus.encode_seconds

    return RetrievalReport(
        task=choice.task,
        data=data.source or data.name,
        split=split,
        model=str(getattr(embedder, "name_or_path", "")),
        n_queries=len(data.query_ids),
        n_documents=len(data.corpus_ids),
        instructions=choice,
        query_prompt=q_prompt,
        document_prompt=d_prompt,
        first_stage=first,
        dims=dim_reports,
        rerank=rerank_report,
        reranker=str(getattr(reranker, "name_or_path", "")) if reranker is not None else None,
        rerank_instruction=r_instr,
        top_k=top_k,
        ignore_identical_ids=ignore_identical_ids,
        timings=timings,
        cache={
            "dir": str(cache_dir) if cache_dir is not None else None,
            "corpus_hit": corpus.cache_hit,
            "queries_hit": queries.cache_hit,
            "corpus_entry": str(corpus.path) if corpus.path else None,
        },
        first_stage_run=first_run,
        rerank_run=reranked,
    )


def _top_pairs(docs: dict[str, float], n: int, *, exclude: str) -> list[tuple[str, float]]:
    ranked = sorted(
        ((d, s) for d, s in docs.items() if d != exclude), key=lambda item: (item[1], item[0]), reverse=True
    )
    return ranked[:n]
