"""``TorchRuntime``: a transformers module (``AutoModel`` or ``*ForCausalLM``) behind the runtime seam.

The only place in embedforge that calls the Hugging Face module and knows its cache classes.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..batching import position_ids_from_mask
from ..pooling import last_token_pool, pool
from .base import PrefixCache


def cache_argument(module: Any) -> str:
    """The keyword a transformers model takes its key/value cache under.

    transformers >= 5.24 calls it ``cache`` (``past_key_values`` is deprecated, to be removed in
    5.40); older versions only know ``past_key_values``.
    """
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass(frozen=True)
class TorchPrefixCache:
    """Keys and values of one prefix, per layer, each ``(1, kv_heads, length, head_dim)``."""

    length: int
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]


class TorchRuntime:
    """A transformers module run as it is: ``module`` is a base model (``AutoModel``, used by the
    embedder) or a causal LM (``*ForCausalLM``, used by the reranker, whose head gives the logits).

    ``causal`` marks a decoder: positions are counted over attended tokens (left padding never
    shifts them) and no cache is built. The module may be changed in place (LoRA, gradient
    checkpointing): the runtime reads it on every call. ``embed`` and ``last_position_states``
    are differentiable outside ``torch.inference_mode`` (training uses them).
    """

    backend = "torch"

    def __init__(self, module: torch.nn.Module, *, causal: bool = True) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"TorchRuntime needs a torch.nn.Module, got {type(module).__name__}")
        self.module: Any = module  # a transformers model: its attributes are dynamic
        self.causal = causal
        self._cache_kwarg = cache_argument(self.module.base_model) if causal else "past_key_values"

    # ------------------------------------------------------------------ facts
    @property
    def hidden_size(self) -> int:
        return int(self.module.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.module.get_input_embeddings().num_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def supports_prefix_cache(self) -> bool:
        return self.causal

    # ------------------------------------------------------------------ embedding
    def _decoder_kwargs(self, attention_mask: torch.Tensor) -> dict:
        if not self.causal:
            return {}
        # positions count real tokens only, so left padding never shifts a text's positions
        return {"position_ids": position_ids_from_mask(attention_mask), "use_cache": False}

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str | None
    ) -> torch.Tensor:
        hidden = self.module(
            input_ids=input_ids, attention_mask=attention_mask, **self._decoder_kwargs(attention_mask)
        ).last_hidden_state  # (batch, seq, hidden)
        return hidden if pooling is None else pool(hidden, attention_mask, pooling)  # (batch, hidden)

    # ------------------------------------------------------------------ causal LM (reranker)
    def last_position_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.module.base_model(
            input_ids=input_ids, attention_mask=attention_mask, **self._decoder_kwargs(attention_mask)
        ).last_hidden_state  # (batch, seq, hidden)
        return last_token_pool(hidden, attention_mask)  # (batch, hidden)

    def head_logits(self, states: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
        weight = self.module.get_output_embeddings().weight  # (vocab, hidden)
        rows = weight[list(token_ids)]  # (k, hidden)
        return (states @ rows.T).float()  # (batch, k)

    def build_prefix_cache(self, prefix_ids: Sequence[int]) -> TorchPrefixCache:
        if not self.causal:
            raise NotImplementedError("a prefix cache needs a causal (decoder) model")
        prefix = torch.tensor([list(prefix_ids)], device=self.device)  # (1, P)
        out = self.module.base_model(input_ids=prefix, use_cache=True)
        cache = out.cache if self._cache_kwarg == "cache" else out.past_key_values
        layers = tuple(
            (layer.keys, layer.values) for layer in cache.layers
        )  # each (1, kv_heads, P, head_dim)
        return TorchPrefixCache(len(prefix_ids), layers)

    def states_after_prefix(
        self, cache: PrefixCache, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        from transformers import DynamicCache

        if not isinstance(cache, TorchPrefixCache):
            raise TypeError(f"TorchRuntime needs its own prefix cache, got {type(cache).__name__}")
        b = input_ids.shape[0]
        kv = DynamicCache(
            ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in cache.layers],
            config=self.module.config,
        )
        ones = attention_mask.new_ones((b, cache.length))
        mask = torch.cat([ones, attention_mask], dim=1)  # (B, P + S)
        positions = position_ids_from_mask(attention_mask, offset=cache.length)  # (B, S)
        hidden = self.module.base_model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kwarg: kv},
        ).last_hidden_state  # (B, S, hidden)
        return last_token_pool(hidden, attention_mask)  # (B, hidden)

    def __repr__(self) -> str:
        return f"TorchRuntime({type(self.module).__name__}, causal={self.causal})"


__all__ = ["TorchPrefixCache", "TorchRuntime", "cache_argument"]
