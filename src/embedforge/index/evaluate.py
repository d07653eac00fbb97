"""Evaluate an existing index on a BEIR directory, and TREC run files.

:func:`evaluate_index` chooses the query instruction exactly as ``embedforge eval retrieval`` does
(the official Qwen3 instruction of the task for instruction-aware models, none for others), runs
the index's search for every judged query and scores the run with
:func:`embedforge.evaluation.metrics.retrieval_scores` (pytrec_eval), so exact search over an index
reports the figures ``eval retrieval`` reports on the same data and model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from .hits import Hit
from .index import Index

DEFAULT_K_VALUES = (1, 3, 5, 10, 100)


def metric_names(k_values: Iterable[int]) -> list[str]:
    ks = sorted(set(k_values))
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"k_values must be positive integers, got {list(k_values)}")
    return [f"{fam}@{k}" for fam in ("ndcg", "map", "recall", "mrr", "p") for k in ks]


def run_of(query_ids: Sequence[str], hits: Sequence[Sequence[Hit]]) -> dict[str, dict[str, float]]:
    """``{qid: {doc_id: score}}`` from each query's hits."""
    return {q: {h.id: h.score for h in hs} for q, hs in zip(query_ids, hits, strict=True)}


def write_trec_run(
    out: IO[str], query_ids: Sequence[str], hits: Sequence[Sequence[Hit]], tag: str = "embedforge"
) -> int:
    """TREC run lines ``qid Q0 docid rank score tag``; returns the number of lines."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag must be one word without spaces, got {tag!r}")
    n = 0
    for q, hs in zip(query_ids, hits, strict=True):
        for h in hs:
            out.write(f"{q} Q0 {h.id} {h.rank} {h.score:.9g} {tag}\n")  # 9 digits: float32 exact
            n += 1
    return n


def read_trec_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """A TREC run file as ``{qid: {doc_id: score}}``; a bad line names the file and line."""
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise ValueError(f"{path}:{n}: expected 'qid Q0 docid rank score tag', got {line.strip()!r}")
            try:
                score = float(parts[4])
            except ValueError:
                raise ValueError(f"{path}:{n}: score {parts[4]!r} is not a number") from None
            run.setdefault(parts[0], {})[parts[2]] = score
    return run


def evaluate_index(
    index_dir: str | os.PathLike,
    beir_dir: str | os.PathLike,
    split: str = "test",
    k_values: Iterable[int] = DEFAULT_K_VALUES,
    *,
    task: str | None = None,
    instruction: str | None = None,
    top_k: int = 100,
    mode: str = "exact",
    embedder: Any = None,
    device: str | None = None,
    threads: int | None = None,
    index: Index | None = None,
) -> dict[str, Any]:
    """Search every judged query of ``beir_dir``'s ``split`` in the index and score the run.

    Returns a JSON-ready dict: ``metrics`` (``ndcg@10`` ... as fractions), the instruction used,
    how many judged documents the index lacks, and timings. ``task`` picks the official
    instruction (default: the directory's name); ``instruction`` overrides it.
    """
    from embedforge.evaluation.data import load_beir
    from embedforge.evaluation.instructions import TaskKind, choose_instructions, is_instruction_aware
    from embedforge.evaluation.metrics import retrieval_scores

    names = metric_names(k_values)
    idx = index or Index.open(index_dir, embedder, device=device, threads=threads)
    data = load_beir(Path(beir_dir), split)
    choice = choose_instructions(
        task or data.name,
        TaskKind.RETRIEVAL,
        instruction_aware=is_instruction_aware(idx.embedder),
        user_instruction=instruction,
    )
    t0 = time.perf_counter()
    q = idx.encode_queries(data.query_texts, choice.query)
    t1 = time.perf_counter()
    found = idx.search_vectors(q, top_k, mode=mode, payload=False)
    t2 = time.perf_counter()
    run = run_of(data.query_ids, found)
    scores = retrieval_scores(data.qrels, run, names)
    in_index = set(idx.vectors(full=False).ids)
    judged = {d for docs in data.qrels.values() for d in docs}
    return {
        "index": str(Path(index_dir)),
        "data": str(Path(beir_dir)),
        "split": split,
        "task": choice.task,
        "instruction": choice.query,
        "query_prompt": idx.embedder.query_prompt(choice.query),
        "mode": mode,
        "model": idx.manifest.model,
        "n_queries": scores.n_queries,
        "n_index_rows": len(in_index),
        "judged_documents_missing": len(judged - in_index),
        "metrics": scores.mean,
        "timings": {"encode_queries_s": t1 - t0, "search_s": t2 - t1},
        "run": run,
    }
