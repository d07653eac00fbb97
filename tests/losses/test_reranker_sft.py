"""RerankerSFTLoss against a direct reading of -log p(label) (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from embedforge.losses import RerankerSFTLoss
from embedforge.prompts import NO_ID, YES_ID


def reference(logits, labels):
    """-log p(label) over the two tokens [no, yes], one row at a time."""
    total = 0.0
    for row, label in zip(logits, labels.tolist(), strict=True):
        target = 1 if label == 1 else 0
        total = total - torch.log(torch.exp(row[target]) / (torch.exp(row[0]) + torch.exp(row[1])))
    return total / len(labels)


def test_two_token_matches_reference():
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(6, 2, generator=g, dtype=torch.float64)).requires_grad_(True)
    labels = torch.tensor([1, 0, 0, 1, 1, 0])
    ours = RerankerSFTLoss().loss_from_logits(logits, labels)
    ours.backward()
    ref_in = logits.detach().clone().requires_grad_(True)
    ref = reference(ref_in, labels)
    ref.backward()
    torch.testing.assert_close(ours.double(), ref)
    torch.testing.assert_close(logits.grad, ref_in.grad)
    # -log p(yes) is the negative log of the reranker score sigmoid(z_yes - z_no)
    one = torch.tensor([[0.3, 1.7]])
    value = RerankerSFTLoss().loss_from_logits(one, torch.tensor([1])).item()
    assert value == pytest.approx(-math.log(1 / (1 + math.exp(-(1.7 - 0.3)))), rel=1e-6)


def test_full_vocab_matches_reference():
    g = torch.Generator().manual_seed(1)
    vocab = YES_ID + 10
    logits = torch.randn(2, vocab, generator=g, dtype=torch.float64).requires_grad_(True)
    with torch.no_grad():
        logits[0, YES_ID] += 5.0
    labels = torch.tensor([1, 0])
    ours = RerankerSFTLoss(full_vocab=True).loss_from_logits(logits, labels)
    ours.backward()
    # reference over the vocabulary with logsumexp (a plain Python sum over 9.7k terms is slow)
    ref_in = logits.detach().clone().requires_grad_(True)
    lse = torch.logsumexp(ref_in, dim=1)
    ref = -((ref_in[0, YES_ID] - lse[0]) + (ref_in[1, NO_ID] - lse[1])) / 2
    ref.backward()
    torch.testing.assert_close(ours.double(), ref)
    torch.testing.assert_close(logits.grad, ref_in.grad)
    # the two-token loss differs: it ignores every other token
    two = RerankerSFTLoss().loss_from_logits(logits.detach()[:, [NO_ID, YES_ID]], labels)
    assert two.item() < ours.item()


def test_bad_input():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        RerankerSFTLoss().loss_from_logits(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="two-token"):
        RerankerSFTLoss().loss_from_logits(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="full_vocab"):
        RerankerSFTLoss(full_vocab=True).loss_from_logits(torch.zeros(2, 3), torch.tensor([0, 1]))
