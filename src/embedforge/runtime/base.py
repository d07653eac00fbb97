"""The runtime seam: the few things ``Embedder`` and ``Reranker`` need of a backbone.

Everything above this seam works on token-id lists and torch tensors and never touches the
model: the prompts (:mod:`embedforge.prompts`), tokenization, truncation and end-token rules
(``Embedder.tokenize``, ``Reranker.tokenize_pairs``), the token-budget batching
(:mod:`embedforge.batching`), padding, the pooling rules (:mod:`embedforge.pooling`), scoring
from logits, ranking, the engine and the server. A runtime only turns a padded batch
``(input_ids, attention_mask)`` into the tensors below.

What a new runtime (ONNX Runtime, int8, ...) must implement, beside :class:`TorchRuntime`:

- ``backend`` (its name), ``hidden_size``, ``vocab_size`` (rows of the input embedding table:
  every token id must be below it), ``device`` (where the wrappers put the batches) and
  ``dtype`` (of its activations);
- ``embed(input_ids, attention_mask, pooling)``: ``(batch, hidden)`` pooled states, pooled with
  :func:`embedforge.pooling.pool` so the pooling rules stay in one place, or ``(batch, seq,
  hidden)`` final states when ``pooling`` is ``None``;
- ``last_position_states(input_ids, attention_mask)``: the final (normed) hidden state at the
  last real position of a causal LM, ``(batch, hidden)``;
- ``head_logits(states, token_ids)``: those states against the given rows of the LM head,
  ``(batch, len(token_ids))`` float32 (the reranker asks for ``[no, yes]``);
- ``supports_prefix_cache``; when true, ``build_prefix_cache(prefix_ids)`` (run one shared
  token prefix once) and ``states_after_prefix(cache, input_ids, attention_mask)`` (the
  last-position states of right-padded remainders that continue that prefix). A runtime
  without a reusable cache sets it false and the reranker runs every input in full.

Rules every runtime follows: batches may be left or right padded, so position ids are counted
over attended tokens only (:func:`embedforge.batching.position_ids_from_mask`) and padding never
shifts a text's positions; outputs are torch tensors (on any device; callers move them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class PrefixCache(Protocol):
    """An opaque, read-only cache of one token prefix; safe to share between threads."""

    @property
    def length(self) -> int:
        """Number of prefix tokens it holds."""
        ...


@runtime_checkable
class Runtime(Protocol):
    """A backbone as ``Embedder`` and ``Reranker`` use it (see the module docstring)."""

    backend: str

    @property
    def hidden_size(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def supports_prefix_cache(self) -> bool: ...

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str | None
    ) -> torch.Tensor:
        """``(batch, hidden)`` pooled with ``pooling``, or ``(batch, seq, hidden)`` when ``None``."""
        ...

    def last_position_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden state at the last real position: ``(batch, hidden)``."""
        ...

    def head_logits(self, states: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
        """Logits of ``token_ids`` from last-position states: ``(batch, len(token_ids))`` float32."""
        ...

    def build_prefix_cache(self, prefix_ids: Sequence[int]) -> PrefixCache:
        """Run ``prefix_ids`` once and keep what continuing inputs need."""
        ...

    def states_after_prefix(
        self, cache: PrefixCache, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Last-position states of right-padded remainders that follow the cached prefix: ``(batch, hidden)``."""
        ...


def torch_module(runtime: Runtime) -> torch.nn.Module:
    """The torch module behind ``runtime``; only :class:`TorchRuntime` has one (training needs it)."""
    module = getattr(runtime, "module", None)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(
            f"this model runs on the {getattr(runtime, 'backend', type(runtime).__name__)!r} runtime, which has "
            "no torch module; training, saving and .model need the 'torch' runtime"
        )
    return module


__all__ = ["PrefixCache", "Runtime", "torch_module"]
