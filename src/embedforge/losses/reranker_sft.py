"""The point-wise SFT loss of Qwen3-Reranker (arXiv 2506.05176, section 3.2)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from embedforge.prompts import NO_ID, YES_ID


class RerankerSFTLoss(nn.Module):
    r"""``L = -log p(l | P(q, d))`` with ``l = "yes"`` for relevant pairs and ``"no"`` otherwise.

    ``P(q, d)`` is the reranker prompt (``RERANK_PREFIX + pair + RERANK_SUFFIX``) and the
    probability is read from the next-token logits at the last prompt position. By default the
    softmax runs over the two tokens the reranker scores with::

        p(yes) = exp(z_yes) / (exp(z_yes) + exp(z_no))        # two_token (default)

    which is exactly the quantity returned as the relevance score. With ``full_vocab=True`` the
    softmax runs over the whole vocabulary (the language-model SFT form)::

        p(l) = exp(z_l) / sum_v exp(z_v)

    The loss is the mean over the batch.

    Input layout of :meth:`loss_from_logits`: ``logits (n, 2)`` ordered ``[no, yes]`` (what
    ``Reranker.forward`` returns), or ``(n, vocab)`` when ``full_vocab``; ``labels (n,)`` in
    ``{0, 1}`` (1 = relevant).

    Example::

        >>> import torch
        >>> RerankerSFTLoss().loss_from_logits(torch.tensor([[0.0, 2.0]]), torch.tensor([1])).item() < 0.2
        True
    """

    def __init__(self, reranker: Any = None, *, full_vocab: bool = False) -> None:
        super().__init__()
        self.reranker = reranker
        self.full_vocab = full_vocab

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``batch``: ``input_ids``/``attention_mask`` (left padded, ``Reranker.collate``) and ``labels``."""
        if self.reranker is None:
            raise ValueError("RerankerSFTLoss.forward needs a reranker; pass one or call loss_from_logits")
        if self.full_vocab:
            hidden = self.reranker.last_hidden(batch["input_ids"], batch["attention_mask"])  # (n, hidden)
            logits = self.reranker.model.get_output_embeddings()(hidden).float()  # (n, vocab)
        else:
            logits = self.reranker.forward(batch["input_ids"], batch["attention_mask"])  # (n, 2) [no, yes]
        return self.loss_from_logits(logits, batch["labels"])

    def loss_from_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
            raise ValueError(
                f"logits must be (n, 2 or vocab) with n = len(labels) = {labels.shape[0]}, got {tuple(logits.shape)}"
            )
        labels = labels.long()
        if ((labels != 0) & (labels != 1)).any():
            raise ValueError(f"labels must be 0 or 1, got {labels.unique().tolist()}")
        if self.full_vocab:
            if logits.shape[1] <= max(YES_ID, NO_ID):
                raise ValueError(f"full_vocab needs logits over the vocabulary, got width {logits.shape[1]}")
            target = torch.where(labels == 1, YES_ID, NO_ID)  # (n,) token ids
        else:
            if logits.shape[1] != 2:
                raise ValueError(f"two-token logits must be (n, 2) [no, yes], got {tuple(logits.shape)}")
            target = labels  # index 1 = yes, 0 = no
        return F.cross_entropy(logits.float(), target)
