"""Pooling of token states into one vector per text — the only place it is written."""

from __future__ import annotations

from enum import Enum
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F

_EPS = 1e-12  # floor of the norm, as torch.nn.functional.normalize


class Pooling(str, Enum):
    """How token states become one vector. Qwen3-Embedding uses ``lasttoken``."""

    LASTTOKEN = "lasttoken"
    MEAN = "mean"
    CLS = "cls"
    MAX = "max"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row, correct for left and right padding.

    ``attention_mask`` (batch, seq) of 0/1 -> (batch,) long.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (seq,)
    return (attention_mask.long() * positions).argmax(dim=1)  # (batch,)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """State of the last real token: (batch, seq, hidden) -> (batch, hidden)."""
    if bool(attention_mask[:, -1].all()):  # left padding (or none): position -1 everywhere
        return hidden[:, -1]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of attended token states: (batch, seq, hidden) -> (batch, hidden)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """State of the first attended token (the [CLS] of encoders; assumes right padding)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    first = attention_mask.long().argmax(dim=1)  # (batch,)
    return hidden[rows, first]


def max_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max over attended token states."""
    masked = hidden.masked_fill(attention_mask.unsqueeze(-1) == 0, torch.finfo(hidden.dtype).min)
    return masked.max(dim=1).values


_POOLERS = {
    Pooling.LASTTOKEN: last_token_pool,
    Pooling.MEAN: mean_pool,
    Pooling.CLS: cls_pool,
    Pooling.MAX: max_pool,
}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: Pooling | str) -> torch.Tensor:
    """Apply the pooling ``mode`` to (batch, seq, hidden) states -> (batch, hidden)."""
    return _POOLERS[Pooling(mode)](hidden, attention_mask)


@overload
def truncate_and_normalize(emb: torch.Tensor, dim: int | None, normalize: bool = True) -> torch.Tensor: ...
@overload
def truncate_and_normalize(emb: np.ndarray, dim: int | None, normalize: bool = True) -> np.ndarray: ...
def truncate_and_normalize(emb, dim, normalize=True):
    """Matryoshka: keep the first ``dim`` features, then L2-normalise (when the model normalises).

    The one truncate-and-renormalise rule: ``x[..., :dim] / max(||x[..., :dim]||, 1e-12)``, for torch
    tensors (differentiable; training uses it) and numpy arrays (float32 out; evaluation and the
    store use it). ``dim=None`` keeps every feature.
    """
    if isinstance(emb, np.ndarray):
        out = np.asarray(emb[..., :dim] if dim is not None else emb, dtype=np.float32)
        if not normalize:
            return out
        norms = np.linalg.norm(out, axis=-1, keepdims=True)
        return out / np.maximum(norms, _EPS)
    if dim is not None:
        emb = emb[..., :dim]
    return F.normalize(emb, p=2, dim=-1, eps=_EPS) if normalize else emb
