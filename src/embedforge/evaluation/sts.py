"""Semantic textual similarity: Spearman and Pearson correlation of cosine similarity with gold scores."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.evaluation.data import PairData
from embedforge.evaluation.encoding import EncoderLike, encode_side, side_prompt, truncate_normalize
from embedforge.evaluation.instructions import (
    InstructionChoice,
    TaskKind,
    choose_instructions,
    is_instruction_aware,
)
from embedforge.evaluation.metrics import correlation
from embedforge.store import EmbeddingStore


@dataclass
class StsReport:
    """Correlations of one STS evaluation (fractions in [-1, 1]; MTEB prints them x100)."""

    task: str | None
    data: str
    model: str
    n_pairs: int
    instructions: InstructionChoice
    prompt: str
    dim: int | None
    spearman: float
    pearson: float
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["instructions"] = self.instructions.to_dict()
        return d


def cosine_pairs(a: np.ndarray, b: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays, after optional Matryoshka truncation."""
    a, b = truncate_normalize(a, dim), truncate_normalize(b, dim)
    return np.einsum("nd,nd->n", a, b)  # (n,)


def evaluate_sts(
    embedder: EncoderLike,
    data: PairData,
    *,
    task: str | None = None,
    instruction: str | None = None,
    dim: int | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
) -> StsReport:
    """Embed both sentences of every pair (same prompt on both sides) and correlate cosine with gold."""
    choice = choose_instructions(
        task or "STSBenchmark",
        TaskKind.STS,
        instruction_aware=is_instruction_aware(embedder),
        user_instruction=instruction,
    )
    # STS is symmetric: both sides take the same prompt (none for models without instructions)
    prompt = side_prompt(embedder, choice.query, query_side=False)
    cache = EmbeddingStore(cache_dir) if cache_dir is not None else None
    t0 = time.perf_counter()
    e1 = encode_side(
        embedder, data.sentences1, prompt, cache=cache, desc="sentences1", show_progress=show_progress
    )
    e2 = encode_side(
        embedder, data.sentences2, prompt, cache=cache, desc="sentences2", show_progress=show_progress
    )
    encode_s = time.perf_counter() - t0
    corr = correlation(cosine_pairs(e1.embeddings, e2.embeddings, dim), data.scores)
    return StsReport(
        task=choice.task,
        data=data.name,
        model=str(getattr(embedder, "name_or_path", "")),
        n_pairs=corr.n,
        instructions=choice,
        prompt=prompt,
        dim=dim,
        spearman=corr.spearman,
        pearson=corr.pearson,
        timings={"encode_s": encode_s},
    )
