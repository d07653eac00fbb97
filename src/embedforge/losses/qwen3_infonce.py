"""The improved InfoNCE loss of Qwen3 Embedding (arXiv 2506.05176, equation 1)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Qwen3InfoNCELoss(nn.Module):
    r"""Improved InfoNCE with in-batch queries/documents and a false-negative mask.

    For a batch of N instances ``(q_i, d_i+, d_i1- .. d_iK-)``, cosine similarity ``s`` and
    temperature ``tau``::

        L   = -(1/N) sum_i log( exp(s(q_i, d_i+)/tau) / Z_i )
        Z_i =   exp(s(q_i, d_i+)/tau)
              + sum_k       m_ik exp(s(q_i,  d_ik-)/tau)   # the instance's K hard negatives
              + sum_{j!=i}  m_ij exp(s(q_i,  q_j)/tau)     # other in-batch queries        (qq)
              + sum_{d in D_i} m   exp(s(d_i+, d)/tau)     # other in-batch documents vs d_i+ (dd)
              + sum_{d in D_i} m   exp(s(q_i,  d)/tau)     # other in-batch documents vs q_i  (qd)
        m = 0 if s > s(q_i, d_i+) + margin  or  d == d_i+,  else 1

    ``D_i`` is the set of in-batch documents of the *other* instances: their positives and, with
    ``in_batch_hard_negatives=True`` (default), their hard negatives too. Conventions (the paper
    leaves them open): each masked term is compared with the threshold through its own
    similarity (qq through ``s(q_i, q_j)``, dd through ``s(d_i+, d)``, the query-document terms
    through ``s(q_i, d)``); the threshold ``s(q_i, d_i+) + margin`` is on raw cosine and detached;
    ``d == d_i+`` means the same text: the caller passes document ids (e.g. a hash of each text;
    the trainer does) as ``positive_ids (n,)`` / ``negative_ids (n, K)``; without ids, exactly
    equal vectors count as the same document (fragile: one text encoded in two differently
    padded batches can differ in the last bit). The rule applies to every document term (hard
    negatives, dd, qd) but not to the qq term.

    Input layout of :meth:`loss_from_embeddings`: L2-normalised ``query (n, dim)``,
    ``positive (n, dim)``, ``negatives (n, K, dim)`` or ``None``. In distributed training the
    ``all_*`` arguments carry the embeddings of the whole (gathered) batch and ``offset`` is
    the index of this process's first instance in it; the local loss is then the sum over local
    instances divided by the global N, so the sum over processes is the global mean.

    Example::

        >>> import torch, torch.nn.functional as F
        >>> loss = Qwen3InfoNCELoss(temperature=0.05)
        >>> q, p = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
        >>> n = F.normalize(torch.randn(4, 2, 8), dim=-1)
        >>> loss.loss_from_embeddings(q, p, n).shape
        torch.Size([])

    ``forward(batch)`` encodes a tokenized batch with an :class:`embedforge.Embedder` given at
    construction (the trainer's :func:`embedforge.training.embedder_trainer.embedder_step` calls
    :meth:`loss_from_embeddings` itself, with GradCache chunking, gathering and document ids).
    """

    def __init__(
        self,
        embedder: Any = None,
        *,
        temperature: float = 0.01,
        margin: float = 0.1,
        query_query: bool = True,
        doc_doc: bool = True,
        query_doc: bool = True,
        in_batch_hard_negatives: bool = True,
        mask_false_negatives: bool = True,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.embedder = embedder
        self.temperature = temperature
        self.margin = margin
        self.query_query = query_query
        self.doc_doc = doc_doc
        self.query_doc = query_doc
        self.in_batch_hard_negatives = in_batch_hard_negatives
        self.mask_false_negatives = mask_false_negatives

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        """Encode ``batch["query"|"positive"|"negatives"]`` (``input_ids``/``attention_mask``;
        negatives flattened instance-major, K per instance) and return the loss."""
        if self.embedder is None:
            raise ValueError(
                "Qwen3InfoNCELoss.forward needs an embedder; pass one or call loss_from_embeddings"
            )
        q = self.embedder.forward(**batch["query"])
        p = self.embedder.forward(**batch["positive"])
        neg = None
        if "negatives" in batch:
            flat = self.embedder.forward(**batch["negatives"])  # (n * K, dim)
            neg = flat.view(q.shape[0], -1, flat.shape[-1])  # (n, K, dim)
        return self.loss_from_embeddings(q, p, neg)

    def _mask(
        self, sim: torch.Tensor, threshold: torch.Tensor, same_as_positive: torch.Tensor | None
    ) -> torch.Tensor:
        """True where a term is kept. ``sim (n, m)`` raw cosine, ``threshold (n, 1)``."""
        if not self.mask_false_negatives:
            return torch.ones_like(sim, dtype=torch.bool)
        keep = sim <= threshold
        if same_as_positive is not None:
            keep &= ~same_as_positive
        return keep

    def loss_from_embeddings(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        negatives: torch.Tensor | None = None,
        *,
        all_query: torch.Tensor | None = None,
        all_positive: torch.Tensor | None = None,
        all_negatives: torch.Tensor | None = None,
        offset: int = 0,
        positive_ids: torch.Tensor | None = None,
        negative_ids: torch.Tensor | None = None,
        all_positive_ids: torch.Tensor | None = None,
        all_negative_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n, dim = query.shape
        if positive.shape != (n, dim):
            raise ValueError(f"positive must have shape {(n, dim)}, got {tuple(positive.shape)}")
        if negatives is not None and (
            negatives.ndim != 3 or negatives.shape[0] != n or negatives.shape[2] != dim
        ):
            raise ValueError(f"negatives must have shape (n={n}, K, dim={dim}), got {tuple(negatives.shape)}")
        all_query = query if all_query is None else all_query
        all_positive = positive if all_positive is None else all_positive
        if all_negatives is None:
            all_negatives = negatives
        use_ids = positive_ids is not None
        if use_ids:
            if negatives is not None and negative_ids is None:
                raise ValueError("positive_ids were given without negative_ids")
            all_positive_ids = positive_ids if all_positive_ids is None else all_positive_ids
            all_negative_ids = negative_ids if all_negative_ids is None else all_negative_ids
        n_all = all_query.shape[0]
        if not 0 <= offset <= n_all - n:
            raise ValueError(f"offset {offset} does not place {n} local instances inside a batch of {n_all}")
        tau = self.temperature
        own = torch.arange(n, device=query.device) + offset  # (n,) global index of each local instance

        s_pos = (query * positive).sum(-1, keepdim=True)  # (n, 1)
        threshold = s_pos.detach() + self.margin  # (n, 1)
        logits = [s_pos / tau]

        if negatives is not None and negatives.shape[1] > 0:
            s_neg = torch.einsum("nd,nkd->nk", query, negatives)  # (n, K)
            if use_ids:
                assert positive_ids is not None and negative_ids is not None  # checked above
                same = negative_ids == positive_ids[:, None]  # (n, K)
            else:
                same = (negatives == positive[:, None, :]).all(-1)  # (n, K)
            logits.append(s_neg.masked_fill(~self._mask(s_neg, threshold, same), float("-inf")) / tau)

        if self.query_query:
            s_qq = query @ all_query.T  # (n, n_all)
            keep = self._mask(s_qq, threshold, None)
            keep[torch.arange(n), own] = False  # j != i
            logits.append(s_qq.masked_fill(~keep, float("-inf")) / tau)

        if self.doc_doc or self.query_doc:
            docs = [all_positive]  # in-batch documents D, with the instance that owns each
            owner = [torch.arange(n_all, device=query.device)]
            ids: list[torch.Tensor] = []
            if use_ids:
                assert all_positive_ids is not None and positive_ids is not None  # set above
                ids.append(all_positive_ids)
            if self.in_batch_hard_negatives and all_negatives is not None and all_negatives.shape[1] > 0:
                k = all_negatives.shape[1]
                docs.append(all_negatives.reshape(n_all * k, dim))  # (n_all * K, dim)
                owner.append(torch.arange(n_all, device=query.device).repeat_interleave(k))
                if use_ids:
                    assert all_negative_ids is not None  # checked above
                    ids.append(all_negative_ids.reshape(n_all * k))  # (n_all * K,)
            pool = torch.cat(docs)  # (m, dim), m = n_all * (1 + K)
            pool_owner = torch.cat(owner)  # (m,)
            others = pool_owner[None, :] != own[:, None]  # (n, m): documents of other instances
            if use_ids:
                assert positive_ids is not None
                same = torch.cat(ids)[None, :] == positive_ids[:, None]  # (n, m)
            else:
                same = (pool[None, :, :] == positive[:, None, :]).all(-1)  # (n, m)
            if self.doc_doc:
                s_dd = positive @ pool.T  # (n, m)
                keep = self._mask(s_dd, threshold, same) & others
                logits.append(s_dd.masked_fill(~keep, float("-inf")) / tau)
            if self.query_doc:
                s_qd = query @ pool.T  # (n, m)
                keep = self._mask(s_qd, threshold, same) & others
                logits.append(s_qd.masked_fill(~keep, float("-inf")) / tau)

        all_logits = torch.cat(logits, dim=1)  # (n, 1 + K + ...)
        per_instance = torch.logsumexp(all_logits, dim=1) - all_logits[:, 0]  # (n,)
        return per_instance.sum() / n_all
