"""What the embedder and the reranker share: a runtime, a tokenizer used safely from many threads,
the device, dtype and batch budget."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .batching import default_batch_tokens
from .inputs import check_texts
from .runtime import Runtime, torch_module


def load_tokenizer(path: Path, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


_LOCKS: weakref.WeakKeyDictionary[object, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def tokenizer_lock(tokenizer: object) -> threading.RLock:
    """The one lock of a tokenizer object, shared by every wrapper (and the server engine) using it.

    A fast tokenizer is a Rust object whose truncation settings are changed in place on each call:
    two threads calling it at once raise "Already borrowed" or get the other call's truncation.
    Every call into a tokenizer from embedforge holds this lock.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(tokenizer)
        if lock is None:
            lock = _LOCKS[tokenizer] = threading.RLock()
        return lock


class ModelWrapper:
    """Base of ``Embedder`` and ``Reranker``: subclasses set ``runtime``, ``tokenizer`` and
    ``_batch_tokens``, and say how a torch module becomes their runtime (``_torch_runtime``)."""

    runtime: Runtime
    tokenizer: Any  # a transformers tokenizer
    _batch_tokens: int | None

    def _torch_runtime(self, module: torch.nn.Module) -> Runtime:
        raise NotImplementedError

    # ------------------------------------------------------------------ the backbone
    @property
    def model(self) -> torch.nn.Module:
        """The torch module (only with the torch runtime): training and saving use it."""
        return torch_module(self.runtime)

    @model.setter
    def model(self, module: torch.nn.Module) -> None:
        # a new runtime, never a change to the old one: shallow copies share the old runtime
        self.runtime = self._torch_runtime(module)

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def dtype(self) -> torch.dtype:
        return self.runtime.dtype

    @property
    def hidden_size(self) -> int:
        return self.runtime.hidden_size

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding table: every token id must be below it."""
        return self.runtime.vocab_size

    @property
    def batch_tokens(self) -> int:
        """Padded tokens per batch: as given, else 4096 on CPU and 16384 on accelerators."""
        return self._batch_tokens or default_batch_tokens(self.device)

    # ------------------------------------------------------------------ tokenizer
    @property
    def tokenizer_lock(self) -> threading.RLock:
        """Hold this around any direct use of ``tokenizer`` that may run beside the wrapper's own."""
        return tokenizer_lock(self.tokenizer)

    def _token_ids(
        self, texts: Sequence[str], *, add_special_tokens: bool = False, max_length: int | None = None
    ) -> list[list[int]]:
        """Token ids of ``texts``, truncated to ``max_length`` when given; thread-safe."""
        if not texts:
            return []
        with self.tokenizer_lock:
            enc = self.tokenizer(
                list(texts),
                add_special_tokens=add_special_tokens,
                truncation=max_length is not None,
                max_length=max_length,
                padding=False,
            )
        return [list(x) for x in enc["input_ids"]]

    def raw_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of ``texts`` with no special tokens and no truncation (to measure inputs)."""
        return self._token_ids(check_texts(texts))
