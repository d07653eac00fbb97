"""``loss: mnrl`` is sentence-transformers' MultipleNegativesRankingLoss: the improved InfoNCE with
the query-document term and hard negatives only and no mask gives its value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from embedforge.losses import Qwen3InfoNCELoss
from embedforge.recipe.stage_settings import MNRL_TERMS, SupervisedStage


def test_mnrl_preset_sets_the_terms_and_matches_sentence_transformers():
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    stage = SupervisedStage(loss="mnrl", temperature=0.05)
    settings = stage.trainer_settings()
    assert {k: settings[k] for k in MNRL_TERMS} == MNRL_TERMS

    torch.manual_seed(0)
    n, k, dim = 6, 3, 16
    q = torch.randn(n, dim, requires_grad=True)  # raw leaves: sentence-transformers normalises inside
    p = torch.randn(n, dim)
    p[1] = p[0]  # a duplicate positive: MNRL counts it, so must the preset (no "same text" rule)
    p.requires_grad_(True)
    neg = torch.randn(n, k, dim, requires_grad=True)

    ours = Qwen3InfoNCELoss(temperature=0.05, margin=stage.margin, **MNRL_TERMS)
    mnrl = st_losses.MultipleNegativesRankingLoss(model=None, scale=1 / 0.05)
    a = ours.loss_from_embeddings(F.normalize(q, dim=-1), F.normalize(p, dim=-1), F.normalize(neg, dim=-1))
    cols = [p] + [neg[:, j] for j in range(k)]  # sentence-transformers: one column per role
    b = mnrl.compute_loss_from_embeddings([q, *cols], None)
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a, [q, p, neg])
    gb = torch.autograd.grad(b, [q, p, neg])
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y)


def test_qwen3_preset_keeps_the_configured_terms():
    s = SupervisedStage(doc_doc=False, mask_false_negatives=False)
    t = s.trainer_settings()
    assert t["doc_doc"] is False and t["mask_false_negatives"] is False and t["query_query"] is True
    assert "synthetic" not in t and "loss" not in t and "enabled" not in t
