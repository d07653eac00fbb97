"""Encoding for evaluation: the prompt of each side, the cache, and Matryoshka truncation.

Every evaluator (retrieval, STS, bitext) encodes through :func:`encode_side`, so prompts and the
cache are handled in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from embedforge import prompts
from embedforge.inputs import MIN_DIM, check_dim
from embedforge.pooling import truncate_and_normalize
from embedforge.store import EmbeddingStore, Encoded, Progress, cached_encode


class EncoderLike(Protocol):
    """What evaluation needs of :class:`embedforge.Embedder`."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def max_length(self) -> int: ...

    @property
    def pooling(self) -> str: ...

    @property
    def hidden_size(self) -> int: ...

    def query_prompt(self, instruction: str | None = None) -> str: ...

    def encode(
        self,
        texts: Sequence[str],
        *,
        prompt: str = "",
        show_progress: bool = False,
        progress: Progress | None = None,
    ) -> Any:
        """(n, hidden) embeddings; advances ``progress`` (when given) once per encoded batch."""
        ...


def side_prompt(embedder: EncoderLike, instruction: str | None, *, query_side: bool) -> str:
    """The text put before every input of one side: :func:`embedforge.prompts.side_prompt` over the
    embedder's own prompt table (an instruction gives Qwen3's ``"Instruct: {instruction}\\nQuery:"``,
    none gives the checkpoint's ``query`` / ``document`` prompt, usually none for documents)."""
    table = dict(getattr(embedder, "prompts", None) or {})
    return prompts.side_prompt("query" if query_side else "document", instruction, table)


def encode_side(
    embedder: EncoderLike,
    texts: Sequence[str],
    prompt: str,
    *,
    cache: EmbeddingStore | None,
    desc: str,
    show_progress: bool = True,
) -> Encoded:
    """Full-dimension, L2-normalised embeddings of ``prompt + text`` for every text, through the store.

    The store draws one progress bar and the embedder advances it per batch (issue 15 item 11).
    """

    def run(batch: Sequence[str], progress: Progress) -> np.ndarray:
        return np.asarray(embedder.encode(list(batch), prompt=prompt, progress=progress))

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
        encode_takes_progress=True,
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
    return truncate_and_normalize(embeddings, dim)  # the library's one rule, numpy variant


def parse_dims(text: str | None, full: int | None = None) -> list[int]:
    """Parse ``"32,64,128"``; every value must be an integer in ``MIN_DIM``..``full``."""
    if not text:
        return []
    dims = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(
                f"bad dimension {part!r} in {text!r}: give comma-separated positive integers, e.g. 32,64,128"
            )
        value = int(part)
        if full is not None:
            check_dim(value, full)  # the library's one Matryoshka rule
        elif value < MIN_DIM:
            raise ValueError(f"dim={value} is out of range: Matryoshka dims must be at least {MIN_DIM}")
        dims.append(value)
    return sorted(set(dims))
