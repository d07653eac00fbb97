"""Selecting synthetic records and giving them hard negatives.

``filter_records``: the paper keeps a synthetic pair for stage 2 when the cosine similarity of query
and positive exceeds 0.7 (scored by a trained embedder); records are then deduplicated, exactly
(same query and positive after case and whitespace folding) and nearly (a query whose embedding is
within ``near_dup`` cosine of an earlier kept query's is dropped).

``add_negatives``: hard negatives from :func:`embedforge.training.mining.mine_hard_negatives` (the one
miner of the project), per task: retrieval records are mined from the given corpus (else from the
pool of retrieval positives), bitext and STS records from the pool of their task's positives;
classification records keep the task's other labels, which are their natural hard negatives.
Negatives the LLM wrote (STS) come first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedforge.search import exact_search


@dataclass
class FilterReport:
    total: int
    kept: int
    low_cosine: int
    exact_duplicates: int
    near_duplicates: int
    min_cos: float
    near_dup: float | None


def fold(text: str) -> str:
    """Case and whitespace folded text: the identity of an exact duplicate."""
    return " ".join(text.casefold().split())


def _check_records(records: Sequence[dict]) -> None:
    for n, r in enumerate(records):
        if not isinstance(r.get("query"), str) or not isinstance(r.get("positive"), str):
            raise ValueError(f"record {n} needs string 'query' and 'positive', has {sorted(r)}")


def query_embeddings(
    embedder: Any, records: Sequence[dict], *, use_instructions: bool = True, show_progress: bool = False
) -> np.ndarray:
    """(n, d) embeddings of every record's query with its own instruction (None: the embedder's default
    query prompt; so too for every record without ``use_instructions``, for embedders not trained with
    instructions)."""
    groups: dict[str | None, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r.get("instruction") if use_instructions else None, []).append(i)
    out: np.ndarray | None = None
    for inst, rows in groups.items():
        q = np.asarray(
            embedder.encode_queries(
                [records[i]["query"] for i in rows], instruction=inst, show_progress=show_progress
            )
        )
        if out is None:
            out = np.empty((len(records), q.shape[1]), dtype=np.float32)
        out[rows] = q
    assert out is not None
    return out


def pair_cosines(
    embedder: Any, records: Sequence[dict], *, use_instructions: bool = True, show_progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of each record's instructed query with its positive, and the query embeddings."""
    q = query_embeddings(
        embedder, records, use_instructions=use_instructions, show_progress=show_progress
    )  # (n, d)
    d = np.asarray(
        embedder.encode_documents([r["positive"] for r in records], show_progress=show_progress)
    )  # (n, d)
    return (q * d).sum(axis=1), q


def filter_records(
    embedder: Any,
    records: Sequence[dict],
    *,
    min_cos: float = 0.7,
    near_dup: float | None = 0.95,
    neighbours: int = 16,
    use_instructions: bool = True,
    show_progress: bool = False,
) -> tuple[list[dict], FilterReport]:
    """Keep records with cos(query, positive) >= ``min_cos``, then drop exact and near duplicates
    (first occurrence kept). ``near_dup=None`` turns the near-duplicate pass off; ``use_instructions=False``
    embeds queries without their instructions (for embedders not trained with them). The cosine is
    written into each kept record's ``provenance`` (or a top-level ``"cos"`` without one)."""
    if not -1.0 <= min_cos <= 1.0:
        raise ValueError(f"min_cos must be in [-1, 1], got {min_cos}")
    if near_dup is not None and not 0.0 < near_dup <= 1.0:
        raise ValueError(f"near_dup must be in (0, 1] or None, got {near_dup}")
    _check_records(records)
    if not records:
        return [], FilterReport(0, 0, 0, 0, 0, min_cos, near_dup)
    cos, q = pair_cosines(embedder, records, use_instructions=use_instructions, show_progress=show_progress)
    good = [i for i in range(len(records)) if cos[i] >= min_cos]
    seen: set[tuple[str, str]] = set()
    unique: list[int] = []
    for i in good:
        key = (fold(records[i]["query"]), fold(records[i]["positive"]))
        if key not in seen:
            seen.add(key)
            unique.append(i)
    kept = unique
    if near_dup is not None and len(unique) > 1:
        qs = q[unique]  # (n_unique, d)
        hits = exact_search(qs, qs, min(len(unique), neighbours + 1))
        keep_mask = np.zeros(len(unique), dtype=bool)
        for a in range(len(unique)):
            # an earlier kept query this close makes record a a near duplicate
            dup = any(
                b < a and keep_mask[b] and s >= near_dup
                for b, s in zip(hits.indices[a], hits.scores[a], strict=True)
            )
            keep_mask[a] = not dup
        kept = [unique[a] for a in range(len(unique)) if keep_mask[a]]
    out = []
    for i in kept:
        r = dict(records[i])
        if isinstance(r.get("provenance"), dict):
            r["provenance"] = {**r["provenance"], "cos": round(float(cos[i]), 6)}
        else:
            r["cos"] = round(float(cos[i]), 6)
        out.append(r)
    report = FilterReport(
        total=len(records),
        kept=len(out),
        low_cosine=len(records) - len(good),
        exact_duplicates=len(good) - len(unique),
        near_duplicates=len(unique) - len(kept),
        min_cos=min_cos,
        near_dup=near_dup,
    )
    return out, report


def record_task(record: dict) -> str:
    prov = record.get("provenance")
    return str(prov.get("task", "retrieval")) if isinstance(prov, dict) else "retrieval"


def add_negatives(
    embedder: Any,
    records: Sequence[dict],
    *,
    corpus: Sequence[str] | None = None,
    k: int = 7,
    skip_top: int = 10,
    show_progress: bool = False,
) -> list[dict]:
    """Records in input order with mined hard negatives added after the ones they already have."""
    from embedforge.training.mining import mine_hard_negatives

    _check_records(records)
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_task.setdefault(record_task(r), []).append(i)
    out = [dict(r) for r in records]
    for task, rows in by_task.items():
        if task == "classification":
            continue
        group = [records[i] for i in rows]
        pool = (
            list(corpus)
            if (task == "retrieval" and corpus)
            else list(dict.fromkeys(r["positive"] for r in group))
        )
        mined = mine_hard_negatives(
            embedder, group, pool, k=k, skip_top=skip_top, show_progress=show_progress
        )
        for i, m in zip(rows, mined, strict=True):
            own = list(records[i].get("negatives") or [])
            out[i]["negatives"] = list(
                dict.fromkeys(own + [n for n in m["negatives"] if n != records[i]["positive"]])
            )
    return out
