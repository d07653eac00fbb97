"""What a search returns, and the three first-stage searches over the table's vectors.

- exact: :func:`embedforge.search.exact_search` (the function ``eval retrieval`` uses) over every
  row's vector held in memory: the same ranking as brute force. Equal scores keep table order
  (corpus order for a fresh build; a replaced document moves to the end).
- ann: LanceDB's vector index (``optimize --ann``), scores recomputed from the returned vectors.
- int8 / binary: compact codes in memory, then the candidates rescored with full precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from embedforge.search import exact_search

from . import table as tbl
from .quantize import CompactVectors


@dataclass(frozen=True)
class Hit:
    """One search result; ``score`` is the first-stage dot product (cosine for normalised vectors)."""

    id: str
    score: float
    rank: int  # 1-based, after reranking when there was a reranker
    text: str = ""
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    rerank_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Candidates:
    """Per query: table positions best first and their full-precision scores."""

    positions: list[np.ndarray]
    scores: list[np.ndarray]


def _order(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Score descending, then table position ascending."""
    return np.lexsort((positions, -scores))


def exact(queries: np.ndarray, matrix: np.ndarray, k: int, rows: np.ndarray | None) -> Candidates:
    """Brute-force top k; ``rows`` (positions, ascending) restricts it to a filter's matches."""
    sub = matrix if rows is None else matrix[rows]
    if len(sub) == 0:
        empty = [np.zeros(0, np.int64) for _ in queries]
        return Candidates(empty, [np.zeros(0, np.float32) for _ in queries])
    res = exact_search(queries, sub, k)
    idx = res.indices if rows is None else rows[res.indices]  # (n_query, k) table positions
    return Candidates(list(idx), list(res.scores))


def rescore(table, vectors: tbl.Vectors, queries: np.ndarray, cand: list[np.ndarray], k: int) -> Candidates:
    """Full-precision scores of each query's candidates, read from the table; the best ``k``."""
    pos_out, score_out = [], []
    for q, c in zip(queries, cand, strict=True):
        if len(c) == 0:
            pos_out.append(c)
            score_out.append(np.zeros(0, np.float32))
            continue
        got = tbl.fetch(table, vectors.row_ids[c], ["vector"])["vector"].combine_chunks()
        full = got.values.to_numpy(zero_copy_only=False).reshape(len(c), -1)  # (n_cand, dim)
        s = (full @ q).astype(np.float32)  # (n_cand,)
        order = _order(s, c)[:k]
        pos_out.append(c[order])
        score_out.append(s[order])
    return Candidates(pos_out, score_out)


def quantized(
    table,
    vectors: tbl.Vectors,
    compact: CompactVectors,
    queries: np.ndarray,
    k: int,
    rows: np.ndarray | None,
    rescore_multiplier: int,
) -> Candidates:
    if rescore_multiplier < 1:
        raise ValueError(f"rescore_multiplier must be >= 1, got {rescore_multiplier}")
    cand = [compact.candidates(q, k * rescore_multiplier, rows) for q in queries]
    return rescore(table, vectors, queries, cand, k)


def ann(
    table,
    vectors: tbl.Vectors,
    queries: np.ndarray,
    k: int,
    where: str | None,
    *,
    metric: str,
    nprobes: int | None,
    refine_factor: int | None,
) -> Candidates:
    """LanceDB's ANN index; scores recomputed in float32 so they compare with exact ones."""
    pos_of = {int(r): i for i, r in enumerate(vectors.row_ids.tolist())}
    pos_out, score_out = [], []
    for q in queries:
        b = table.search(q, vector_column_name="vector").distance_type(metric).limit(k)
        if nprobes is not None:
            b = b.nprobes(nprobes)
        if refine_factor is not None:
            b = b.refine_factor(refine_factor)
        if where is not None:
            b = b.where(where, prefilter=True)
        t = b.select(["vector"]).with_row_id(True).to_arrow()
        full = t["vector"].combine_chunks().values.to_numpy(zero_copy_only=False).reshape(len(t), -1)
        pos = np.asarray([pos_of[int(r)] for r in t["_rowid"].to_pylist()], dtype=np.int64)
        s = (full @ q).astype(np.float32) if len(t) else np.zeros(0, np.float32)
        order = _order(s, pos)
        pos_out.append(pos[order])
        score_out.append(s[order])
    return Candidates(pos_out, score_out)


def to_hits(table, vectors: tbl.Vectors, cand: Candidates, *, payload: bool) -> list[list[Hit]]:
    """Hits with id and score, plus text, title and metadata when ``payload``."""
    out: list[list[Hit]] = []
    meta_cols = [n for n in table.schema.names[5:]]
    for pos, scores in zip(cand.positions, cand.scores, strict=True):
        rows: list[dict[str, Any]] = []
        if payload and len(pos):
            rows = tbl.fetch(table, vectors.row_ids[pos], ["text", "title", *meta_cols]).to_pylist()
        hits = []
        for r, (p, s) in enumerate(zip(pos.tolist(), scores.tolist(), strict=True)):
            if rows:
                row = rows[r]
                hits.append(
                    Hit(
                        vectors.ids[p],
                        float(s),
                        r + 1,
                        row["text"] or "",
                        row["title"] or "",
                        {c: row[c] for c in meta_cols},
                    )
                )
            else:
                hits.append(Hit(vectors.ids[p], float(s), r + 1))
        out.append(hits)
    return out


def rerank(
    reranker: Any, queries: list[str], hits: list[list[Hit]], *, top: int, k: int, instruction: str | None
) -> list[list[Hit]]:
    """Score each query's ``top`` hits with the reranker in one call (pairs grouped by query, so the
    reranker runs each query's shared prefix once); reranked hits first, by rerank score."""
    if top < 1:
        raise ValueError(f"rerank_top must be >= 1, got {top}")
    pairs = [(q, _doc_text(h)) for q, hs in zip(queries, hits, strict=True) for h in hs[:top]]
    scores: np.ndarray = (
        np.asarray(reranker.score_pairs(pairs, instruction), dtype=np.float64) if pairs else np.zeros(0)
    )
    out, at = [], 0
    for hs in hits:
        head = hs[:top]
        rs = [float(s) for s in scores[at : at + len(head)]]
        at += len(head)
        order = sorted(range(len(head)), key=lambda i: -rs[i])  # stable: first-stage order on ties
        ranked = [_with(head[i], rerank_score=rs[i]) for i in order] + list(hs[top:])
        out.append([_with(h, rank=r + 1) for r, h in enumerate(ranked[:k])])
    return out


def _doc_text(h: Hit) -> str:
    from embedforge.corpus import document_text

    return document_text(h.title, h.text)


def _with(h: Hit, **changes: Any) -> Hit:
    from dataclasses import replace

    return replace(h, **changes)
