"""Tiny Qwen3 embedder and reranker train end to end: the loss goes down, the saved model reloads
through the core loaders and scores; metrics, curve and LoRA/bf16/checkpointing options work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from embedforge import Embedder, Reranker
from embedforge.training import (
    EmbedderTrainingConfig,
    LoraSettings,
    RerankerTrainingConfig,
    train_embedder,
    train_reranker,
)


@pytest.mark.slow
def test_embedder_trains_saves_reloads_and_scores(train_embedder_dir, embedding_jsonl, tmp_path):
    out = tmp_path / "emb"
    cfg = EmbedderTrainingConfig(
        model=str(train_embedder_dir),
        data=str(embedding_jsonl),
        output_dir=str(out),
        max_steps=6,
        batch_size=8,
        learning_rate=1e-2,
        num_negatives=2,
        temperature=0.05,
        matryoshka_dims=[64, 32],
        max_length=48,
        show_progress=False,
    )
    before = Embedder.from_pretrained(train_embedder_dir)
    result = train_embedder(cfg)
    assert result.output_dir == out and len(result.losses) == 6
    assert np.mean(result.losses[-2:]) < np.mean(result.losses[:2]) - 0.05, result.losses
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7)) and rows[0]["loss"] == pytest.approx(
        result.losses[0]
    )
    assert (out / "loss_curve.png").stat().st_size > 1000
    after = Embedder.from_pretrained(out)
    assert after.max_length == before.max_length  # trained at 48 tokens, saved with the checkpoint's own
    q = "the boiling point of water"
    docs = [
        "Water boils at 100 degrees Celsius at sea level.",
        "Rust guarantees memory safety without a garbage collector.",
    ]
    s_before = before.encode_queries([q]) @ before.encode_documents(docs).T
    s_after = after.encode_queries([q]) @ after.encode_documents(docs).T
    assert s_after.shape == (1, 2) and np.isfinite(s_after).all()
    assert (s_after[0, 0] - s_after[0, 1]) > (s_before[0, 0] - s_before[0, 1])  # the trained pair moved ahead


@pytest.mark.slow
def test_reranker_trains_saves_reloads_and_scores(tiny_reranker_dir, reranker_jsonl, tmp_path):
    out = tmp_path / "rr"
    cfg = RerankerTrainingConfig(
        model=str(tiny_reranker_dir),
        data=str(reranker_jsonl),
        output_dir=str(out),
        max_steps=6,
        batch_size=16,
        learning_rate=1e-3,
        chunk_size=8,
        show_progress=False,
    )
    result = train_reranker(cfg)
    assert np.mean(result.losses[-2:]) < np.mean(result.losses[:2]), result.losses
    rr = Reranker.from_pretrained(out)
    scores = rr.score(
        "the boiling point of water",
        ["Water boils at 100 degrees Celsius at sea level.", "Espresso forces hot water"],
    )
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))


@pytest.mark.slow
def test_lora_bf16_checkpointing_full_vocab(train_embedder_dir, tiny_reranker_dir, embedding_jsonl, tmp_path):
    lora = LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    out = tmp_path / "lora"
    cfg = EmbedderTrainingConfig(
        model=str(train_embedder_dir),
        data=str(embedding_jsonl),
        output_dir=str(out),
        max_steps=2,
        batch_size=4,
        learning_rate=1e-2,
        num_negatives=1,
        lora=lora,
        precision="bf16",
        gradient_checkpointing=True,
        show_progress=False,
    )
    result = train_embedder(cfg)
    assert all(np.isfinite(result.losses))
    base, merged = load_file(train_embedder_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert not [k for k in merged if "lora_" in k or "base_layer" in k]  # merged: a plain checkpoint
    q_key = next(k for k in merged if k.endswith("layers.0.self_attn.q_proj.weight"))
    k_key = next(k for k in merged if k.endswith("layers.0.self_attn.k_proj.weight"))
    base_q = next(v for k, v in base.items() if k.endswith("layers.0.self_attn.q_proj.weight"))
    base_k = next(v for k, v in base.items() if k.endswith("layers.0.self_attn.k_proj.weight"))
    assert not np.allclose(merged[q_key].numpy(), base_q.numpy())  # adapted and merged
    assert np.array_equal(merged[k_key].numpy(), base_k.numpy())  # not a target: untouched
    assert Embedder.from_pretrained(out).encode(["lora"]).shape == (1, 64)

    rcfg = RerankerTrainingConfig(
        model=str(tiny_reranker_dir),
        data=str(embedding_jsonl),
        output_dir=str(tmp_path / "rr"),
        max_steps=2,
        batch_size=4,
        learning_rate=1e-3,
        full_vocab=True,
        lora=lora,
        show_progress=False,
    )
    assert all(np.isfinite(train_reranker(rcfg).losses))
    assert Reranker.from_pretrained(tmp_path / "rr").score("q", ["d"]).shape == (1,)


def test_records_with_too_few_negatives_are_refused(train_embedder_dir, embedding_jsonl, tmp_path):
    cfg = EmbedderTrainingConfig(
        model=str(train_embedder_dir),
        data=str(embedding_jsonl),
        output_dir=str(tmp_path),
        max_steps=1,
        batch_size=2,
        num_negatives=5,
        show_progress=False,
    )
    with pytest.raises(ValueError, match="fewer than num_negatives=5"):
        train_embedder(cfg)
