"""What the engine is asked to do and what it gives back, and the checks done at submission.

Submission checks run in the caller's thread, before anything is queued, so a bad request fails
at once with an :class:`EngineError` naming the field and the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np

from embedforge import inputs
from embedforge.engine.errors import EngineError, ErrorKind

Side = Literal["query", "document"]


@dataclass
class EmbedTask:
    """Texts or already-tokenized texts (token ids, no special tokens) to embed.

    The prompt put before each input is ``prompt`` when given; otherwise the engine derives it
    from ``side`` and ``instruction`` with the library's one rule (:meth:`Engine.side_prompt`).
    """

    texts: list[str] | None = None
    ids: list[list[int]] | None = None
    prompt: str | None = None
    side: Side | None = None
    instruction: str | None = None
    dim: int | None = None
    truncate: bool = True

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.ids or [])


@dataclass
class EmbedOutput:
    embeddings: np.ndarray  # (n, dim) float32, input order
    tokens: int  # tokens fed to the model (prompt and end token included)


@dataclass
class RerankTask:
    """One query against documents; ``top_n`` keeps only the best N in ``RerankOutput.order``."""

    query: str
    documents: list[str]
    instruction: str | None = None
    truncate: bool = True
    top_n: int | None = None
    query_truncated: bool = False  # set by the engine once tokenized

    def __len__(self) -> int:
        return len(self.documents)


@dataclass
class RerankOutput:
    scores: np.ndarray  # (n_documents,) float32 in [0, 1], input order
    tokens: int
    order: list[int] = field(default_factory=list)  # best first, ties by input order, at most top_n
    query_truncated: bool = False  # the query was cut so that every document keeps its share


# --- checks --------------------------------------------------------------------------------------
def check_unicode(text: str, name: str) -> None:
    """Text must be valid Unicode (the library's rule): JSON escapes such as ``"\\ud800"`` decode to
    lone surrogates, which no tokenizer accepts. ``name`` is ``"field"`` or ``"field[i]"``."""
    try:
        inputs.check_unicode(text, name)
    except ValueError as exc:
        raise EngineError(ErrorKind.VALIDATION, str(exc), param=name.split("[")[0]) from None


def check_texts_unicode(texts: Sequence[str], name: str) -> None:
    for i, text in enumerate(texts):
        check_unicode(text, f"{name}[{i}]")


def check_token_ids(ids: Sequence[Sequence[int]], vocab_size: int) -> None:
    """Every id must index the model's embedding table."""
    for i, row in enumerate(ids):
        if not row:
            raise EngineError(ErrorKind.INVALID_INPUT, f"input[{i}] is an empty token list", param="input")
        bad = next((t for t in row if t < 0 or t >= vocab_size), None)
        if bad is not None:
            raise EngineError(
                ErrorKind.INVALID_INPUT,
                f"input[{i}] holds token id {bad}, outside this model's vocabulary [0, {vocab_size})",
                param="input",
            )


def embed_task(
    inputs: Sequence[str] | Sequence[Sequence[int]],
    prompt: str | None,
    dim: int | None,
    truncate: bool,
    side: Side | None = None,
    instruction: str | None = None,
) -> EmbedTask:
    """An :class:`EmbedTask` from a list of texts or of token-id lists (not a mix)."""
    items = list(inputs)
    common = dict(prompt=prompt, side=side, instruction=instruction, dim=dim, truncate=truncate)
    if items and all(isinstance(x, str) for x in items):
        return EmbedTask(texts=[str(x) for x in items], **common)  # type: ignore[arg-type]
    if items and all(not isinstance(x, str) for x in items):
        rows = cast("list[Sequence[int]]", items)
        return EmbedTask(ids=[[int(t) for t in x] for x in rows], **common)  # type: ignore[arg-type]
    raise ValueError("inputs must be a non-empty list of texts or of token-id lists, not a mix")


__all__ = [
    "EmbedOutput",
    "EmbedTask",
    "RerankOutput",
    "RerankTask",
    "Side",
    "check_token_ids",
    "check_unicode",
    "embed_task",
]
