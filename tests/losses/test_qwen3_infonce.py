"""Qwen3InfoNCELoss against a direct, loop-by-loop reading of equation 1 (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from embedforge.losses import MatryoshkaLoss, Qwen3InfoNCELoss


def reference_loss(q, p, neg, *, tau, margin, qq=True, dd=True, qd=True, hn_in_batch=True, mask=True):
    """Equation 1 term by term with Python loops (float64)."""
    n = q.shape[0]
    k = 0 if neg is None else neg.shape[1]

    def s(a, b):
        return (a * b).sum()

    def kept(sim, thr, doc=None, pos=None):
        if not mask:
            return True
        if sim.item() > thr:
            return False
        return not (doc is not None and torch.equal(doc, pos))

    total = 0.0
    for i in range(n):
        thr = s(q[i], p[i]).item() + margin
        num = torch.exp(s(q[i], p[i]) / tau)
        z = num
        for kk in range(k):
            if kept(s(q[i], neg[i, kk]), thr, neg[i, kk], p[i]):
                z = z + torch.exp(s(q[i], neg[i, kk]) / tau)
        docs = []
        for j in range(n):
            if j == i:
                continue
            docs.append(p[j])
            if hn_in_batch:
                docs.extend(neg[j, kk] for kk in range(k))
            if qq and kept(s(q[i], q[j]), thr):
                z = z + torch.exp(s(q[i], q[j]) / tau)
        for d in docs:
            if dd and kept(s(p[i], d), thr, d, p[i]):
                z = z + torch.exp(s(p[i], d) / tau)
            if qd and kept(s(q[i], d), thr, d, p[i]):
                z = z + torch.exp(s(q[i], d) / tau)
        total = total - torch.log(num / z)
    return total / n


def random_batch(n=5, k=3, dim=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, dim, generator=g, dtype=dtype), dim=-1)
    p = F.normalize(q + 0.8 * torch.randn(n, dim, generator=g, dtype=dtype), dim=-1)
    neg = F.normalize(p[:, None, :] + 1.0 * torch.randn(n, k, dim, generator=g, dtype=dtype), dim=-1)
    return q, p, neg


def check(loss, ref_kw, q, p, neg):
    leaves = [t.clone().requires_grad_(True) for t in (q, p, neg)]
    ours = loss.loss_from_embeddings(*leaves)
    ours.backward()
    leaves_ref = [t.clone().requires_grad_(True) for t in (q, p, neg)]
    ref = reference_loss(*leaves_ref, **ref_kw)
    ref.backward()
    assert math.isfinite(ours.item())
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    for a, b in zip(leaves, leaves_ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"qq": False},
        {"dd": False, "qd": False},
        {"hn_in_batch": False},
        {"mask": False},
        {"qq": False, "dd": False},
    ],
)
@pytest.mark.parametrize("tau,margin", [(0.05, 0.1), (0.5, 0.0)])
def test_matches_loop_reference(opts, tau, margin):
    q, p, neg = random_batch(seed=3)
    loss = Qwen3InfoNCELoss(
        temperature=tau,
        margin=margin,
        query_query=opts.get("qq", True),
        doc_doc=opts.get("dd", True),
        query_doc=opts.get("qd", True),
        in_batch_hard_negatives=opts.get("hn_in_batch", True),
        mask_false_negatives=opts.get("mask", True),
    )
    check(loss, {"tau": tau, "margin": margin, **opts}, q, p, neg)


def test_mask_is_active_and_identical_documents_are_masked():
    q, p, neg = random_batch(n=4, k=2, seed=5)
    # instance 0's hard negative is a copy of its positive; instance 1 and 2 share a positive;
    # instance 3's hard negative is almost its query (scores above the threshold)
    neg = neg.clone()
    p = p.clone()
    neg[0, 0] = p[0]
    p[2] = p[1]
    neg[3, 1] = F.normalize(q[3] + 1e-3, dim=-1)
    masked = Qwen3InfoNCELoss(temperature=0.05)
    unmasked = Qwen3InfoNCELoss(temperature=0.05, mask_false_negatives=False)
    a = masked.loss_from_embeddings(q, p, neg)
    b = unmasked.loss_from_embeddings(q, p, neg)
    assert a.item() < b.item() - 0.1
    check(masked, {"tau": 0.05, "margin": 0.1}, q, p, neg)


def test_threshold_is_detached():
    """The mask changes with s(q_i, d_i+) but receives no gradient through it: the gradient equals
    the one obtained with the mask computed on a detached copy and held fixed."""
    q, p, neg = random_batch(seed=7)
    check(Qwen3InfoNCELoss(temperature=0.02, margin=0.05), {"tau": 0.02, "margin": 0.05}, q, p, neg)


def test_without_negatives_and_single_instance():
    q, p, _ = random_batch(n=3, k=1, seed=2)
    loss = Qwen3InfoNCELoss(temperature=0.1)
    ref = reference_loss(q, p, None, tau=0.1, margin=0.1, hn_in_batch=False)
    torch.testing.assert_close(loss.loss_from_embeddings(q, p, None), ref)
    # one instance, no negatives: only the positive is in Z, so the loss is exactly 0
    assert loss.loss_from_embeddings(q[:1], p[:1]).item() == pytest.approx(0.0, abs=1e-12)


def test_distributed_slices_sum_to_global_loss():
    """Local losses with the gathered batch and an offset sum to the one-process loss."""
    q, p, neg = random_batch(n=6, seed=11)
    loss = Qwen3InfoNCELoss(temperature=0.05)
    full = loss.loss_from_embeddings(q, p, neg)
    parts = [
        loss.loss_from_embeddings(
            q[s : s + 3],
            p[s : s + 3],
            neg[s : s + 3],
            all_query=q,
            all_positive=p,
            all_negatives=neg,
            offset=s,
        )
        for s in (0, 3)
    ]
    torch.testing.assert_close(parts[0] + parts[1], full)


def test_bad_shapes_and_options_name_the_value():
    q, p, neg = random_batch()
    with pytest.raises(ValueError, match="temperature"):
        Qwen3InfoNCELoss(temperature=0)
    with pytest.raises(ValueError, match="positive must have shape"):
        Qwen3InfoNCELoss().loss_from_embeddings(q, p[:2], neg)
    with pytest.raises(ValueError, match="negatives must have shape"):
        Qwen3InfoNCELoss().loss_from_embeddings(q, p, neg[:, 0])


def test_matryoshka_is_the_weighted_mean_over_truncations():
    q, p, neg = random_batch(dim=16, seed=13)
    base = Qwen3InfoNCELoss(temperature=0.05)
    mrl = MatryoshkaLoss(base, dims=[16, 8, 4], weights=[1.0, 2.0, 1.0])
    parts = []
    for dim in (16, 8, 4):
        parts.append(base.loss_from_embeddings(*(F.normalize(t[..., :dim], dim=-1) for t in (q, p, neg))))
    expected = (parts[0] + 2 * parts[1] + parts[2]) / 4
    torch.testing.assert_close(mrl.loss_from_embeddings(q, p, neg), expected)
    with pytest.raises(ValueError, match="exceed"):
        MatryoshkaLoss(base, dims=[32]).loss_from_embeddings(q, p, neg)
    with pytest.raises(ValueError, match="weights"):
        MatryoshkaLoss(base, dims=[8, 4], weights=[1.0])


def test_document_ids_decide_identity_when_given():
    """One text encoded in two batches may differ in the last bits: with ids it still counts as
    the same document, exactly as identical vectors do without ids."""
    q, p, neg = random_batch(n=4, k=2, seed=17)
    p_exact, neg_exact = p.clone(), neg.clone()
    p_exact[2] = p_exact[1]
    neg_exact[0, 1] = p_exact[0]
    p_noisy, neg_noisy = p_exact.clone(), neg_exact.clone()
    p_noisy[2] = F.normalize(p_noisy[2] + 1e-7, dim=-1)
    neg_noisy[0, 1] = F.normalize(neg_noisy[0, 1] - 1e-7, dim=-1)
    pos_ids = torch.tensor([10, 11, 11, 13])
    neg_ids = torch.tensor([[20, 10], [21, 22], [23, 24], [25, 26]])
    loss = Qwen3InfoNCELoss(temperature=0.05)
    exact = loss.loss_from_embeddings(q, p_exact, neg_exact)
    with_ids = loss.loss_from_embeddings(q, p_noisy, neg_noisy, positive_ids=pos_ids, negative_ids=neg_ids)
    without_ids = loss.loss_from_embeddings(q, p_noisy, neg_noisy)
    torch.testing.assert_close(with_ids, exact, rtol=1e-5, atol=1e-6)
    assert abs(without_ids.item() - exact.item()) > 1e-3
    with pytest.raises(ValueError, match="negative_ids"):
        loss.loss_from_embeddings(q, p, neg, positive_ids=pos_ids)
