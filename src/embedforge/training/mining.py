"""Hard-negative mining with an embedder: the documents ranked just below the top, minus positives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from embedforge.search import exact_search


def mine_hard_negatives(
    embedder: Any,
    records: Sequence[dict],
    corpus: Sequence[str],
    *,
    k: int = 7,
    skip_top: int = 10,
    instruction: str | None = None,
    show_progress: bool = False,
    doc_embeddings: np.ndarray | None = None,
) -> list[dict]:
    """Fill ``"negatives"`` of each record with (up to) ``k`` hard negatives from ``corpus``.

    Every distinct query (with its instruction: the record's ``"instruction"``, else
    ``instruction``, else the embedder's default) is searched once over the corpus with
    :func:`embedforge.search.exact_search`; the first ``skip_top`` ranks are skipped (they hold
    many unlabelled positives), then the next documents are taken in rank order, leaving out any
    text equal to a positive of that query (in any record) and repeated texts. Returns new dicts
    (the input is not modified); other keys are kept. ``doc_embeddings`` (one row per corpus text,
    from this embedder's ``encode_documents``) skips encoding the corpus again.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if skip_top < 0:
        raise ValueError(f"skip_top must be >= 0, got {skip_top}")
    if not corpus:
        raise ValueError("the corpus to mine negatives from is empty")
    for n, r in enumerate(records):
        if "query" not in r or "positive" not in r:
            raise ValueError(f"record {n} needs 'query' and 'positive', has {sorted(r)}")

    def key(r: dict) -> tuple[str | None, str]:
        return (r.get("instruction") or instruction, r["query"])

    positives: dict[tuple[str | None, str], set[str]] = {}
    for r in records:
        positives.setdefault(key(r), set()).add(r["positive"])
    queries = list(positives)
    if doc_embeddings is not None:
        if len(doc_embeddings) != len(corpus):
            raise ValueError(
                f"doc_embeddings has {len(doc_embeddings)} rows for a corpus of {len(corpus)} texts"
            )
        doc_emb = doc_embeddings
    else:
        doc_emb = embedder.encode_documents(list(corpus), show_progress=show_progress)
    by_instruction: dict[str | None, list[int]] = {}
    for i, (inst, _) in enumerate(queries):
        by_instruction.setdefault(inst, []).append(i)
    depth = min(len(corpus), skip_top + k + max(len(p) for p in positives.values()) + 32)
    mined: dict[tuple[str | None, str], list[str]] = {}
    for inst, rows in by_instruction.items():
        q_emb = embedder.encode_queries(
            [queries[i][1] for i in rows], instruction=inst, show_progress=show_progress
        )
        hits = exact_search(q_emb, doc_emb, depth)
        for row, idx in tqdm(
            list(zip(rows, hits.indices, strict=True)), desc="mining negatives", disable=not show_progress
        ):
            pos = positives[queries[row]]
            chosen: list[str] = []
            for doc in idx[skip_top:]:
                text = corpus[int(doc)]
                if text in pos or text in chosen:
                    continue
                chosen.append(text)
                if len(chosen) == k:
                    break
            mined[queries[row]] = chosen
    return [{**r, "negatives": mined[key(r)]} for r in records]
