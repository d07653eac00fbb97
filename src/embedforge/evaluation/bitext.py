"""Bitext mining (Tatoeba in MTEB): nearest-neighbour accuracy in both directions."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.evaluation.data import BitextData
from embedforge.evaluation.encoding import EncoderLike, encode_side, side_prompt, truncate_normalize
from embedforge.evaluation.instructions import (
    InstructionChoice,
    TaskKind,
    choose_instructions,
    is_instruction_aware,
)
from embedforge.search import exact_search
from embedforge.store import EmbeddingStore


@dataclass
class BitextReport:
    """Share of sentences whose nearest neighbour on the other side is their translation."""

    task: str | None
    data: str
    model: str
    n_pairs: int
    instructions: InstructionChoice
    prompt: str
    dim: int | None
    accuracy_source_to_target: float
    accuracy_target_to_source: float
    accuracy_mean: float
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["instructions"] = self.instructions.to_dict()
        return d


def nearest_neighbour_accuracy(queries: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of rows i whose top-1 dot-product neighbour among ``targets`` is row i."""
    hits = exact_search(queries, targets, 1)  # (n, 1)
    return float(np.mean(hits.indices[:, 0] == np.arange(len(queries))))


def evaluate_bitext(
    embedder: EncoderLike,
    data: BitextData,
    *,
    task: str | None = "Tatoeba",
    instruction: str | None = None,
    dim: int | None = None,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
) -> BitextReport:
    """Embed both sides (same prompt) and score nearest-neighbour retrieval of the translation."""
    choice = choose_instructions(
        task, TaskKind.BITEXT, instruction_aware=is_instruction_aware(embedder), user_instruction=instruction
    )
    prompt = side_prompt(embedder, choice.query, query_side=False)
    cache = EmbeddingStore(cache_dir) if cache_dir is not None else None
    t0 = time.perf_counter()
    src = encode_side(embedder, data.source, prompt, cache=cache, desc="source", show_progress=show_progress)
    tgt = encode_side(embedder, data.target, prompt, cache=cache, desc="target", show_progress=show_progress)
    encode_s = time.perf_counter() - t0
    s, t = truncate_normalize(src.embeddings, dim), truncate_normalize(tgt.embeddings, dim)
    t0 = time.perf_counter()
    fwd, bwd = nearest_neighbour_accuracy(s, t), nearest_neighbour_accuracy(t, s)
    return BitextReport(
        task=choice.task,
        data=data.name,
        model=str(getattr(embedder, "name_or_path", "")),
        n_pairs=len(data.source),
        instructions=choice,
        prompt=prompt,
        dim=dim,
        accuracy_source_to_target=fwd,
        accuracy_target_to_source=bwd,
        accuracy_mean=(fwd + bwd) / 2,
        timings={"encode_s": encode_s, "search_s": time.perf_counter() - t0},
    )
