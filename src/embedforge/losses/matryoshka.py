"""Matryoshka representation learning: a loss averaged over truncated embedding sizes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embedforge.pooling import truncate_and_normalize


def truncate(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Keep the first ``dim`` features and re-normalise (the MRL read-out, written in ``pooling``)."""
    return truncate_and_normalize(x, dim, True)


_EMBEDDING_KWARGS = ("all_query", "all_positive", "all_negatives")


class MatryoshkaLoss(nn.Module):
    r"""``L = sum_k w_k * L_base(truncate(e, dim_k)) / sum_k w_k`` over a list of dims.

    ``truncate(e, m)`` keeps the first ``m`` features of every embedding and L2-normalises again,
    as Qwen3-Embedding does for its MRL dimensions (the paper trains them densely; its list is
    unpublished). ``weights`` default to 1 for every dim. The base loss must offer
    ``loss_from_embeddings(query, positive, negatives, **kw)`` (e.g. :class:`Qwen3InfoNCELoss`);
    the gathered embeddings (``all_query``/``all_positive``/``all_negatives``) are truncated too,
    other keywords (``offset``, document ids) are passed through unchanged.

    Example::

        >>> import torch, torch.nn.functional as F
        >>> from embedforge.losses import Qwen3InfoNCELoss
        >>> mrl = MatryoshkaLoss(Qwen3InfoNCELoss(), dims=[8, 4])
        >>> q, p = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
        >>> mrl.loss_from_embeddings(q, p).ndim
        0
    """

    def __init__(self, base: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not dims:
            raise ValueError("dims must name at least one embedding size")
        if any(d < 1 for d in dims):
            raise ValueError(f"dims must be positive, got {list(dims)}")
        if weights is not None and len(weights) != len(dims):
            raise ValueError(f"weights ({len(weights)}) must match dims ({len(dims)})")
        if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        self.base = base
        self.dims = list(dims)
        self.weights = [1.0] * len(dims) if weights is None else [float(w) for w in weights]

    @property
    def embedder(self) -> Any:
        return getattr(self.base, "embedder", None)

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        """Encode once at full size, then average the base loss over the truncated sizes."""
        embedder = self.embedder
        if embedder is None:
            raise ValueError("MatryoshkaLoss.forward needs a base loss holding an embedder")
        q = embedder.forward(**batch["query"])
        p = embedder.forward(**batch["positive"])
        neg = None
        if "negatives" in batch:
            flat = embedder.forward(**batch["negatives"])  # (n * K, dim)
            neg = flat.view(q.shape[0], -1, flat.shape[-1])  # (n, K, dim)
        return self.loss_from_embeddings(q, p, neg)

    def loss_from_embeddings(
        self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None, **kw: Any
    ) -> torch.Tensor:
        full = query.shape[-1]
        if max(self.dims) > full:
            raise ValueError(f"Matryoshka dims {self.dims} exceed the embedding size {full}")
        total = query.new_zeros(())
        for dim, w in zip(self.dims, self.weights, strict=True):
            cut = {
                k: (truncate(v, dim) if k in _EMBEDDING_KWARGS and v is not None else v)
                for k, v in kw.items()
            }
            neg = None if negatives is None else truncate(negatives, dim)
            # nn.Module.__getattr__ is typed Tensor | Module; base is a loss with loss_from_embeddings
            total = total + w * self.base.loss_from_embeddings(  # type: ignore[operator]
                truncate(query, dim), truncate(positive, dim), neg, **cut
            )
        return total / sum(self.weights)
