"""Encoding for evaluation: the prompt of each side, the cache, and Matryoshka truncation.

Every evaluator (retrieval, STS, bitext) encodes through :func:`encode_side`, so prompts and the
cache are handled in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from embedforge.evaluation.cache import EmbeddingCache, Encoded, cached_encode


class EncoderLike(Protocol):
    """What evaluation needs of :class:`embedforge.Embedder`."""

    fingerprint: str
    max_length: int
    pooling: str
    hidden_size: int

    def query_prompt(self, instruction: str | None = None) -> str: ...

    def encode(
        self, texts: Sequence[str], *, prompt: str = "", show_progress: bool = False
    ) -> np.ndarray: ...


def side_prompt(embedder: EncoderLike, instruction: str | None, *, query_side: bool) -> str:
    """The text put before every input of one side.

    With an instruction: the model's query prompt for it (Qwen3: ``"Instruct: {instruction}\\nQuery:"``).
    Without: the checkpoint's own ``query`` / ``document`` prompt (usually none for documents).
    """
    if instruction is not None:
        return embedder.query_prompt(instruction)
    if query_side:
        return embedder.query_prompt(None)
    return dict(getattr(embedder, "prompts", None) or {}).get("document", "")


def encode_side(
    embedder: EncoderLike,
    texts: Sequence[str],
    prompt: str,
    *,
    cache: EmbeddingCache | None,
    desc: str,
    show_progress: bool = True,
) -> Encoded:
    """Full-dimension, L2-normalised embeddings of ``prompt + text`` for every text, through the cache."""

    def run(batch: Sequence[str]) -> np.ndarray:
        # the cache draws its own progress bar per chunk; without a cache the embedder draws one
        return embedder.encode(list(batch), prompt=prompt, show_progress=show_progress and cache is None)

    return cached_encode(
        cache,
        model_fingerprint=embedder.fingerprint,
        max_length=embedder.max_length,
        pooling=embedder.pooling,
        texts=texts,
        prompt=prompt,
        encode=run,
        desc=desc,
        show_progress=show_progress,
    )


def truncate_normalize(embeddings: np.ndarray, dim: int | None, *, normalized: bool = False) -> np.ndarray:
    """Matryoshka: keep the first ``dim`` components and re-normalise (``None``: all, re-normalised).

    With ``normalized=True`` (rows already unit length) the full dimension is returned as is, so a
    memory-mapped corpus is never copied into RAM.
    """
    full = embeddings.shape[1]
    if dim is not None and not 1 <= dim <= full:
        raise ValueError(f"dimension {dim} is out of range: the model's embeddings have {full} dimensions")
    if normalized and (dim is None or dim == full):
        return embeddings
    emb = np.asarray(embeddings[:, :dim] if dim is not None else embeddings, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)  # (n, 1)
    return emb / np.maximum(norms, 1e-12)


def parse_dims(text: str | None, full: int | None = None) -> list[int]:
    """Parse ``"32,64,128"``; every value must be a positive integer (and <= ``full`` when given)."""
    if not text:
        return []
    dims = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(
                f"bad dimension {part!r} in {text!r}: give comma-separated positive integers, e.g. 32,64,128"
            )
        if full is not None and int(part) > full:
            raise ValueError(f"dimension {part} exceeds the model's {full} dimensions")
        dims.append(int(part))
    return sorted(set(dims))
