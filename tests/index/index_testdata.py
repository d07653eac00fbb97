"""Test data and independent references for the index tests (brute-force ranking in numpy)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

WORDS = (
    "protein cell gene brain heart drug trial cancer virus immune blood liver muscle bone sleep diet "
    "insulin kidney lung skin memory neuron signal receptor enzyme dose risk mouse human study effect"
).split()


def make_docs(n: int, seed: int = 0, *, prefix: str = "d") -> list[dict]:
    """Records with an id, a title, a text and two metadata fields (year, topic)."""
    rng = random.Random(seed)
    return [
        {
            "_id": f"{prefix}{i}",
            "title": " ".join(rng.choices(WORDS, k=3)),
            "text": " ".join(rng.choices(WORDS, k=rng.randint(4, 24))),
            "year": 2000 + rng.randint(0, 24),
            "topic": rng.choice(["bio", "med", "chem"]),
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def full_texts(docs) -> list[str]:
    """MTEB's document text, typed here independently of the corpus module."""
    return [(d.title + " " + d.text).strip() if d.title else d.text.strip() for d in docs]


def brute_force(
    query: np.ndarray, matrix: np.ndarray, ids: list[str], k: int
) -> tuple[list[str], list[float]]:
    """Top k by dot product in float64; equal scores keep the lower row first."""
    s = matrix.astype(np.float64) @ np.asarray(query, np.float64).reshape(-1)  # (n,)
    order = np.lexsort((np.arange(len(s)), -s))[:k]
    return [ids[i] for i in order], [float(s[i]) for i in order]


def scores_by_id(query: np.ndarray, matrix: np.ndarray, ids: list[str]) -> dict[str, float]:
    s = matrix.astype(np.float64) @ np.asarray(query, np.float64).reshape(-1)
    return dict(zip(ids, s.tolist(), strict=True))


def assert_same_ranking(got: list[str], want: list[str], score: dict[str, float], tol: float = 1e-6) -> None:
    """Two rankings agree up to float ties: at every rank the documents have equal reference scores
    (within ``tol``), and a document appears once. Differences in near-equal float32 sums may swap
    tied documents, never documents whose scores differ."""
    assert len(got) == len(want) and len(set(got)) == len(got)
    for r, (a, b) in enumerate(zip(got, want, strict=True)):
        assert abs(score[a] - score[b]) <= tol, f"rank {r + 1}: {a} ({score[a]}) vs {b} ({score[b]})"
