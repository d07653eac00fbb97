"""GradCache chunked encoding gives the unchunked loss and gradients."""

from __future__ import annotations

import pytest
import torch

from embedforge import Embedder
from embedforge.losses import MatryoshkaLoss, Qwen3InfoNCELoss
from embedforge.training.data import EmbeddingRecord
from embedforge.training.embedder_trainer import embedder_batch, embedder_step


def _grads(embedder, loss_fn, batch, chunk_size):
    embedder.model.zero_grad(set_to_none=True)
    loss = embedder_step(embedder, loss_fn, batch, chunk_size=chunk_size)
    return loss, {n: p.grad.clone() for n, p in embedder.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mrl", [False, True])
def test_chunked_equals_unchunked(train_embedder_dir, mrl, make_records):
    embedder = Embedder.from_pretrained(train_embedder_dir, dtype="float32")
    embedder.model.train()
    records = [EmbeddingRecord.model_validate(r) for r in make_records(k=2)[:5]]
    batch = embedder_batch(embedder, records, 2)
    loss_fn = Qwen3InfoNCELoss(temperature=0.05)
    if mrl:
        loss_fn = MatryoshkaLoss(loss_fn, dims=[64, 32])
    plain_loss, plain = _grads(embedder, loss_fn, batch, None)
    for chunk in (1, 3):
        loss, grads = _grads(embedder, loss_fn, batch, chunk)
        assert loss == pytest.approx(plain_loss, rel=1e-5)
        assert grads.keys() == plain.keys() and len(grads) > 5
        for name in plain:
            torch.testing.assert_close(
                grads[name], plain[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
            )
    # the gradients are not trivially zero
    assert sum(float(g.abs().sum()) for g in plain.values()) > 0


@pytest.mark.slow
def test_chunked_with_dropout_replays_the_same_masks(minilm_dir, make_records):
    """all-MiniLM-L6-v2 has dropout 0.1 in train mode: pass 3 must replay pass 1's masks, or the
    gradient would belong to different embeddings than the loss. Checked by a central finite
    difference of the chunked loss (same seed, so the same masks) along the returned gradient."""
    embedder = Embedder.from_pretrained(minilm_dir, dtype="float32")
    embedder.model.train()
    records = [EmbeddingRecord.model_validate(r) for r in make_records(k=1)[:4]]
    batch = embedder_batch(embedder, records, 1)
    loss_fn = Qwen3InfoNCELoss(temperature=0.05)
    torch.manual_seed(0)
    loss_a, grads_a = _grads(embedder, loss_fn, batch, 2)
    torch.manual_seed(0)
    loss_b, grads_b = _grads(embedder, loss_fn, batch, 2)
    assert loss_a == loss_b
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name])
    # the chunked gradient is the gradient of the chunked loss: a finite-difference check along the
    # gradient direction of one weight, with the same dropout masks (same seed)
    name = max(grads_a, key=lambda n: float(grads_a[n].norm()))  # the steepest weight: a clear float32 signal
    p = dict(embedder.model.named_parameters())[name]
    g = grads_a[name]
    eps = 1e-3
    direction = g / g.norm()
    with torch.no_grad():
        p += eps * direction
    torch.manual_seed(0)
    loss_plus, _ = _grads(embedder, loss_fn, batch, 2)
    with torch.no_grad():
        p -= 2 * eps * direction
    torch.manual_seed(0)
    loss_minus, _ = _grads(embedder, loss_fn, batch, 2)
    with torch.no_grad():
        p += eps * direction
    slope = (loss_plus - loss_minus) / (2 * eps)
    assert slope == pytest.approx(float(g.norm()), rel=0.05)
