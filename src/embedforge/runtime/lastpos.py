"""Last-position decoding: the last decoder layer computed only where last-token pooling looks.

With last-token pooling (Qwen3-Embedding, the reranker's yes/no logits) the output is the final
state at one position per text. Layers ``0 .. L-2`` must run on every position (later positions
attend to them), but the last layer needs keys and values of every position and nothing else:
its query, attention output, MLP and final norm matter only at the last position. On a
``L``-layer model this saves about ``(1 - 1/seq) / L`` of the work (a quarter on the 4-layer
benchmark shape).

The pieces are transformers' own: the model's modules for layers ``0 .. L-2`` (a view of the
model that shares its parameters, see :func:`trunk_view`), its rotary embedding, its
``apply_rotary_pos_emb`` and ``repeat_kv``, and the last layer's projections, norms and MLP.
Only the attention of one query against all keys is written here (``scaled_dot_product_attention``).
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import torch
from torch import nn

from ..batching import position_ids_from_mask
from ..pooling import last_token_index
from .torch import TorchRuntime

# decoder families whose layer is ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` with
# q/k/v/o projections, optional per-head q/k norms and rotary positions, all full attention
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")


def last_position_support(module: Any) -> str | None:
    """``None`` when ``module`` (a base decoder or causal LM) can run last-position decoding,
    else the reason it cannot."""
    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {list(SUPPORTED_MODEL_TYPES)}"
    base = module.base_model
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if layer_types[-1] != "full_attention" or getattr(base.layers[-1].self_attn, "sliding_window", None):
        return "the last layer uses sliding-window attention"
    if len(base.layers) < 2:
        return "the model has fewer than two layers"
    return None


def trunk_view(base: Any) -> nn.Module:
    """A view of a base decoder without its last layer and final norm, sharing every parameter.

    The view is a shallow copy with its own module table and config; the original model is not
    changed, so one model serves both paths and several threads at once.
    """
    trunk: Any = copy.copy(base)
    trunk._modules = dict(base._modules)  # own table: replacing entries leaves ``base`` intact
    trunk.layers = nn.ModuleList(list(base.layers)[:-1])
    trunk.norm = nn.Identity()
    config = copy.deepcopy(base.config)
    config.num_hidden_layers = len(trunk.layers)
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:-1]
    trunk.config = config
    return trunk


class LastPositionDecoder:
    """Final (normed) hidden state at the last real position, computing the last layer only there.

    ``module`` is a supported base decoder or causal LM (see :func:`last_position_support`); it
    may hold quantized linear layers (any module with the ``nn.Linear`` call signature).
    """

    def __init__(self, module: Any) -> None:
        reason = last_position_support(module)
        if reason is not None:
            raise ValueError(f"last-position decoding is not available: {reason}")
        self.base: Any = module.base_model
        self.trunk: Any = trunk_view(self.base)
        self.layer: Any = self.base.layers[-1]
        modeling = sys.modules[type(self.layer.self_attn).__module__]
        self._apply_rotary = modeling.apply_rotary_pos_emb
        self._repeat_kv = modeling.repeat_kv

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = position_ids_from_mask(attention_mask)  # (B, S)
        hidden = self.trunk(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
        ).last_hidden_state  # (B, S, H): input of the last layer
        b, s, _ = hidden.shape
        rows = torch.arange(b, device=hidden.device)
        last = last_token_index(attention_mask)  # (B,)
        layer, attn = self.layer, self.layer.self_attn
        normed = layer.input_layernorm(hidden)  # (B, S, H)
        head_dim = attn.head_dim
        q = attn.q_proj(normed[rows, last].unsqueeze(1)).view(b, 1, -1, head_dim)  # (B, 1, nh, d)
        k = attn.k_proj(normed).view(b, s, -1, head_dim)  # (B, S, kvh, d)
        v = attn.v_proj(normed).view(b, s, -1, head_dim).transpose(1, 2)  # (B, kvh, S, d)
        if getattr(attn, "q_norm", None) is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, nh, 1, d), (B, kvh, S, d)
        cos, sin = self.base.rotary_emb(hidden, positions)  # each (B, S, d)
        q, _ = self._apply_rotary(q, q, cos[rows, last].unsqueeze(1), sin[rows, last].unsqueeze(1))
        k, _ = self._apply_rotary(k, k, cos, sin)
        groups = attn.num_key_value_groups
        k, v = self._repeat_kv(k, groups), self._repeat_kv(v, groups)  # (B, nh, S, d)
        # the last real token sees every real token of its text (causal: all come before it)
        keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=keys, scale=attn.scaling
        )  # (B, nh, 1, d)
        out = attn.o_proj(out.transpose(1, 2).reshape(b, 1, -1))  # (B, 1, H)
        x = hidden[rows, last].unsqueeze(1) + out  # (B, 1, H)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.base.norm(x)[:, 0]  # (B, H)


class LastPositionRuntime(TorchRuntime):
    """:class:`TorchRuntime` whose last-token outputs use :class:`LastPositionDecoder`.

    ``embed(..., "lasttoken")`` and ``last_position_states`` skip the last layer's work at every
    position but the last (equal to the full computation up to float rounding); other poolings,
    the prefix cache and training-free paths are the plain ones. With ``last_position=False``, or
    an architecture :func:`last_position_support` refuses, it is a plain :class:`TorchRuntime`.
    """

    def __init__(self, module: nn.Module, *, causal: bool = True, last_position: bool = True) -> None:
        super().__init__(module, causal=causal)
        usable = causal and last_position and last_position_support(module) is None
        self.tail = LastPositionDecoder(module) if usable else None

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pooling: str | None
    ) -> torch.Tensor:
        if self.tail is not None and pooling == "lasttoken":
            return self.tail(input_ids, attention_mask)  # (batch, hidden)
        return super().embed(input_ids, attention_mask, pooling)

    def last_position_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.tail is not None:
            return self.tail(input_ids, attention_mask)  # (batch, hidden)
        return super().last_position_states(input_ids, attention_mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.module).__name__}, last_position={self.tail is not None})"


__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "LastPositionDecoder",
    "LastPositionRuntime",
    "last_position_support",
    "trunk_view",
]
