"""torch-int8 and last-position decoding against fp32, on tiny random checkpoints and real MiniLM.

Tolerances: last-position decoding is the same arithmetic in another order, so it must match
fp32 to 1e-5. int8 is an approximation: on tiny random weights (no outliers) every embedding
keeps a cosine >= 0.99 with fp32 and every reranker score stays within 0.05; on real MiniLM
weights the floor is 0.99 as well (the benchmark measures 1,000 SciFact documents).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.texts import DOCUMENTS, QUERIES

from embedforge import Embedder, Reranker
from embedforge.export import builtin_calibration_texts, quantize_int8
from embedforge.runtime.int8 import (
    Int8Plan,
    Int8Runtime,
    SmoothQuantLinear,
    apply_plan,
    backbone_linears,
    smoothing_scale,
)
from embedforge.runtime.lastpos import LastPositionDecoder, LastPositionRuntime

COSINE_FLOOR = 0.99
SCORE_TOLERANCE = 0.05


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------------------- last position
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_last_position_embedder_matches_full(tiny_embedder_dir, padding_side):
    emb = Embedder.from_pretrained(
        tiny_embedder_dir, device="cpu", dtype="float32", padding_side=padding_side
    )
    full = emb.encode(DOCUMENTS, batch_tokens=256)
    emb.runtime = LastPositionRuntime(emb.model, causal=True)
    assert emb.runtime.tail is not None
    fast = emb.encode(DOCUMENTS, batch_tokens=256)
    np.testing.assert_allclose(fast, full, atol=1e-5, rtol=0)


def test_last_position_reranker_matches_full(tiny_reranker_dir):
    rr = Reranker.from_pretrained(tiny_reranker_dir, device="cpu", dtype="float32", prefix_reuse=False)
    pairs = [(q, d) for q in QUERIES[:3] for d in DOCUMENTS[:6]]
    ids = rr.tokenize_pairs(pairs)
    batch = rr.collate(ids)
    with torch.inference_mode():
        full = rr.last_hidden(**batch)
        rr.runtime = LastPositionRuntime(rr.model, causal=True)
        fast = rr.last_hidden(**batch)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)


def test_last_position_leaves_the_model_whole(tiny_embedder_dir):
    emb = Embedder.from_pretrained(tiny_embedder_dir, device="cpu", dtype="float32")
    layers = len(emb.model.layers)
    LastPositionRuntime(emb.model, causal=True)
    assert len(emb.model.layers) == layers
    assert emb.model.config.num_hidden_layers == layers


def test_last_position_refuses_an_encoder(minilm_dir):
    emb = Embedder.from_pretrained(minilm_dir, device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="model type 'bert' is not one of"):
        LastPositionDecoder(emb.model)
    assert LastPositionRuntime(emb.model, causal=False).tail is None  # falls back to the full path


# ---------------------------------------------------------------------------- smoothquant pieces
def test_smoothquant_linear_is_close_and_scale_invariant():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(50, 64)
    x[:, 3] *= 40  # an outlier channel, as decoders have
    exact = linear(x)
    plain = SmoothQuantLinear(linear, torch.ones(64))(x)
    smooth = SmoothQuantLinear(linear, smoothing_scale(x.abs().amax(0), linear.weight, 0.5))(x)
    err_plain = float((plain - exact).norm() / exact.norm())
    err_smooth = float((smooth - exact).norm() / exact.norm())
    assert err_smooth < err_plain  # migrating the outlier into the weights helps
    assert err_smooth < 0.02


def test_smoothing_scale_rejects_bad_alpha():
    with pytest.raises(ValueError, match=r"alpha .* must be in \[0, 1\], got 1.5"):
        smoothing_scale(torch.ones(4), torch.ones(3, 4), 1.5)


def test_plan_naming_unknown_layers_is_refused(tiny_embedder_dir):
    emb = Embedder.from_pretrained(tiny_embedder_dir, device="cpu", dtype="float32")
    plan = Int8Plan({"layers.9.mlp.up_proj": torch.ones(64)}, {"layers.9.mlp.up_proj": None}, ())
    with pytest.raises(ValueError, match="layers.9.mlp.up_proj"):
        apply_plan(emb.model, plan)


def test_int8_runtime_refuses_bf16(tiny_embedder_dir):
    emb = Embedder.from_pretrained(tiny_embedder_dir, device="cpu", dtype="bfloat16")
    with pytest.raises(ValueError, match="CPU in float32; got device=cpu, dtype=torch.bfloat16"):
        Int8Runtime(emb.model)


# ---------------------------------------------------------------------------- int8 vs fp32
def test_int8_embedder_close_to_fp32(tiny_embedder_dir):
    emb = Embedder.from_pretrained(tiny_embedder_dir, device="cpu", dtype="float32")
    ref = emb.encode(DOCUMENTS + QUERIES)
    record = quantize_int8(emb, builtin_calibration_texts(32))
    assert isinstance(emb.runtime, Int8Runtime) and emb.runtime.tail is not None
    out = emb.encode(DOCUMENTS + QUERIES)
    assert cosines(ref, out).min() >= COSINE_FLOOR
    quantized = sum(isinstance(m, SmoothQuantLinear) for m in emb.model.modules())
    assert quantized == record["int8"]["quantized_linears"] > 0
    assert len(backbone_linears(emb.model)) == len(record["int8"]["keep_fp32"])  # the rest stay fp32
    assert record["calibration"]["texts"] == 32 and len(record["calibration"]["sha256"]) == 64


def test_int8_batched_equals_one_by_one(tiny_embedder_dir):
    emb = Embedder.from_pretrained(tiny_embedder_dir, device="cpu", dtype="float32")
    quantize_int8(emb, builtin_calibration_texts(16))
    batched = emb.encode(DOCUMENTS[:6])
    single = np.stack([emb.encode(d) for d in DOCUMENTS[:6]])
    # dynamic int8 takes one activation scale per call, so a text's batch-mates move it slightly
    assert cosines(batched, single).min() >= 0.995


def test_int8_reranker_close_to_fp32(tiny_reranker_dir):
    rr = Reranker.from_pretrained(tiny_reranker_dir, device="cpu", dtype="float32")
    pairs = [(q, d) for q in QUERIES[:3] for d in DOCUMENTS[:8]]
    ref = rr.score_pairs(pairs)
    quantize_int8(rr, builtin_calibration_texts(16))
    out = rr.score_pairs(pairs)
    assert np.abs(out - ref).max() <= SCORE_TOLERANCE
    rr.prefix_reuse = False  # the plain path (last-position decoding) agrees with the cached one
    np.testing.assert_allclose(rr.score_pairs(pairs), out, atol=0.02)


def test_int8_refuses_a_converted_model(tiny_embedder_dir):
    emb = Embedder.from_pretrained(tiny_embedder_dir, device="cpu", dtype="float32")
    quantize_int8(emb, builtin_calibration_texts(8))
    with pytest.raises(ValueError, match="starts from the fp32 torch runtime"):
        quantize_int8(emb, builtin_calibration_texts(8))


@pytest.mark.slow
def test_int8_minilm_real_weights(minilm_dir, shared_data_dir):
    """Calibrated on 32 SciFact documents, checked on 40 others (the benchmark does 1,000)."""
    from embedforge.export import read_calibration_texts

    corpus = shared_data_dir / "scifact" / "corpus.jsonl"
    texts = read_calibration_texts(corpus, 72)
    docs, calibration = texts[:40], texts[40:]
    emb = Embedder.from_pretrained(minilm_dir, device="cpu", dtype="float32")
    ref = emb.encode(docs)
    quantize_int8(emb, calibration)
    out = emb.encode(docs)
    assert cosines(ref, out).min() >= COSINE_FLOOR
