"""What the embedder and the reranker share: a transformers model, its device, dtype and batch budget."""

from __future__ import annotations

from pathlib import Path

import torch

from .batching import default_batch_tokens


def load_tokenizer(path: Path, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


class ModelWrapper:
    """Base of ``Embedder`` and ``Reranker``: subclasses set ``model`` and ``_batch_tokens``."""

    model: torch.nn.Module
    _batch_tokens: int | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def batch_tokens(self) -> int:
        """Padded tokens per batch: as given, else 4096 on CPU and 16384 on accelerators."""
        return self._batch_tokens or default_batch_tokens(self.device)
