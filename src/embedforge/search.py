"""Exact top-k search by chunked matrix product.

Memory is bounded by ``query_chunk x corpus_chunk`` scores at a time plus the running top-k, so a
corpus far larger than a queries x corpus score matrix still works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SearchResult:
    """Top-k hits, best first: ``scores[i, r]`` is the score of corpus row ``indices[i, r]`` for query i."""

    scores: np.ndarray  # (n_query, k) float32
    indices: np.ndarray  # (n_query, k) int64


def exact_search(
    queries: np.ndarray | torch.Tensor,
    corpus: np.ndarray | torch.Tensor,
    k: int,
    *,
    query_chunk: int = 1024,
    corpus_chunk: int = 65536,
) -> SearchResult:
    """Dot-product top-k of every query over the corpus (cosine for normalised embeddings).

    Ties are broken by the lower corpus index, so results are deterministic.
    """
    q = torch.as_tensor(queries, dtype=torch.float32)
    c = torch.as_tensor(corpus, dtype=torch.float32)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(
            f"queries {tuple(q.shape)} and corpus {tuple(c.shape)} must be 2-D with equal widths"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, c.shape[0])
    all_scores = np.empty((q.shape[0], k), dtype=np.float32)
    all_idx = np.empty((q.shape[0], k), dtype=np.int64)
    for qs in range(0, q.shape[0], query_chunk):
        qb = q[qs : qs + query_chunk]
        best_s = torch.full((qb.shape[0], 0), float("-inf"))
        best_i = torch.empty((qb.shape[0], 0), dtype=torch.long)
        for cs in range(0, c.shape[0], corpus_chunk):
            s = qb @ c[cs : cs + corpus_chunk].T  # (q_chunk, c_chunk)
            top_s, top_i = torch.topk(s, min(k, s.shape[1]), dim=1)  # (q_chunk, <=k)
            cand_s = torch.cat([best_s, top_s], dim=1)  # (q_chunk, <=2k)
            cand_i = torch.cat([best_i, top_i + cs], dim=1)
            # order by index, then stably by score: equal scores keep the lower corpus index first
            by_index = torch.sort(cand_i, dim=1).indices
            cand_s, cand_i = torch.gather(cand_s, 1, by_index), torch.gather(cand_i, 1, by_index)
            order = torch.sort(-cand_s, dim=1, stable=True).indices[:, :k]
            best_s = torch.gather(cand_s, 1, order)
            best_i = torch.gather(cand_i, 1, order)
        all_scores[qs : qs + qb.shape[0]] = best_s.numpy()
        all_idx[qs : qs + qb.shape[0]] = best_i.numpy()
    return SearchResult(all_scores, all_idx)
