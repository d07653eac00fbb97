"""onnx-int8 quantisation (:mod:`embedforge.runtime.onnx_quant`) on exported tiny BERT and Qwen3 graphs.

The graphs are built from transformers configs with random weights and exported inside the test
with ``torch.onnx.export`` (TorchScript exporter: 0.3 s a graph; one slow test runs the dynamo
exporter). Tolerances: tiny random weights have no outliers, so every int8 row keeps a cosine
>= 0.999 with fp32 (measured: > 0.9999); on real MiniLM weights the floor is 0.99 (the benchmark
measures 1,000 SciFact documents).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from embedforge.runtime import onnx_quant
from embedforge.runtime.onnx_quant import MODES, find_targets, min_row_cosine, quantize_onnx, session

TINY_FLOOR = 0.999
REAL_FLOOR = 0.99
VOCAB = 256
MASSIVE_TOKEN = 7  # the token given a massive activation in the injected model


class Pooled(nn.Module):
    """Backbone + pooling: mean over attended tokens, the last attended token, or all states."""

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model, self.pooling = model, pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "logits":
            return out.logits  # (B, S, vocab)
        h = out.last_hidden_state  # (B, S, H)
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, S, 1)
            return (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)
        if self.pooling == "last":
            last = (torch.arange(attention_mask.shape[1]).unsqueeze(0) * attention_mask).argmax(1)  # (B,)
            return h[torch.arange(h.shape[0]), last]  # (B, H)
        return h  # (B, S, H): one row per token


def export(model: nn.Module, pooling: str, path: Path, *, dynamo: bool = False) -> Path:
    ids = torch.randint(8, VOCAB, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    kw: dict = {"input_names": ["input_ids", "attention_mask"], "output_names": ["out"]}
    if dynamo:
        b, s = torch.export.Dim("batch"), torch.export.Dim("seq")
        kw["dynamic_shapes"] = {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}}
    else:
        axes = {0: "batch", 1: "seq"}
        kw |= {"dynamic_axes": {"input_ids": axes, "attention_mask": axes, "out": axes}, "opset_version": 18}
    with torch.inference_mode(), warnings.catch_warnings():
        # torch's dynamo exporter trips over its own pytree deprecation (as in runtime/onnx.py)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        torch.onnx.export(Pooled(model.eval(), pooling), (ids, mask), str(path), dynamo=dynamo, **kw)
    return path


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    return BertModel(config, add_pooling_layer=False)


def tiny_qwen3(*, causal_lm: bool = False, init: float = 0.02) -> nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        initializer_range=init,
        attn_implementation="eager",
    )
    return Qwen3ForCausalLM(config) if causal_lm else Qwen3Model(config)


def feeds(n: int, batch: int, seq: int, seed: int, *, pad: bool = True) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(8, VOCAB, (batch, seq)).astype(np.int64)
        mask = np.ones_like(ids)
        if pad:
            for row in range(1, batch):
                mask[row, rng.integers(seq // 2, seq + 1) :] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def run(path: Path, batches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    sess = session(path)
    return [sess.run(None, b)[0] for b in batches]


def op_count(path: Path, op: str) -> int:
    return sum(n.op_type == op for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("onnx-quant")
    return {
        "bert": export(tiny_bert(), "mean", tmp / "bert.onnx"),
        "qwen3": export(tiny_qwen3(), "last", tmp / "qwen3.onnx"),
    }


CALIBRATION = feeds(3, 4, 16, seed=0)
HELD_OUT = feeds(3, 5, 23, seed=1)  # another batch size and length than calibration


# ---------------------------------------------------------------------------- graph and quality
@pytest.mark.parametrize("name", ["bert", "qwen3"])
def test_inputs_outputs_and_shapes_preserved(graphs, tmp_path, name):
    dst = tmp_path / "int8.onnx"
    report = quantize_onnx(graphs[name], dst, CALIBRATION)
    src_graph, dst_graph = onnx.load(str(graphs[name])).graph, onnx.load(str(dst)).graph
    assert [(i.name, i.type) for i in dst_graph.input] == [(i.name, i.type) for i in src_graph.input]
    assert [o.name for o in dst_graph.output] == [o.name for o in src_graph.output]
    ref, out = run(graphs[name], HELD_OUT), run(dst, HELD_OUT)
    assert [o.shape for o in out] == [r.shape for r in ref] == [(5, 64)] * 3
    assert op_count(dst, "MatMulIntegerToFloat") == len(report["matmuls"]) - len(report["keep_fp32"])
    json.dumps(report)  # JSON-able


@pytest.mark.parametrize("name", ["bert", "qwen3"])
@pytest.mark.parametrize("activations", ["auto", *MODES])
def test_int8_close_to_fp32(graphs, tmp_path, name, activations):
    dst = tmp_path / "int8.onnx"
    report = quantize_onnx(graphs[name], dst, CALIBRATION, activations=activations)
    assert report["agreement"] >= TINY_FLOOR
    assert min_row_cosine(run(graphs[name], HELD_OUT), run(dst, HELD_OUT)) >= TINY_FLOOR
    if activations == "auto":  # the first (cheapest) plan already meets the target on tiny weights
        assert [t["trial"] for t in report["trials"]] == [report["trials"][0]["trial"]]
        assert report["trials"][0]["trial"].startswith("0 of")
    else:
        assert {m["activations"] for m in report["matmuls"].values()} == {activations}


def test_matmul_targets_found_in_both_graphs(graphs):
    for name, per_layer in (("bert", 6), ("qwen3", 7)):
        targets, skipped = find_targets(onnx.load(str(graphs[name])))
        assert len(targets) == 2 * per_layer  # q k v o + 2 (BERT FFN) or 3 (gate up down)
        assert all(t.weight.ndim == 2 for t in targets)
        assert all("not a constant" in why for why in skipped.values())  # attention's x @ x MatMuls


# ---------------------------------------------------------------------------- massive activations
def massive_activation_graph(path: Path) -> Path:
    """A tiny Qwen3 whose layer-0 MLP gives token ``MASSIVE_TOKEN`` one activation ~ 3,000 at the
    down projection's input (as real decoders do on their first token) and leaves every other
    token's activations below ~1: channel 0 of the embeddings belongs to that token alone and
    attention does not read it."""
    model = tiny_qwen3()
    with torch.no_grad():
        emb = model.embed_tokens.weight  # (VOCAB, 64)
        emb[:, 0] = 0.0
        emb[MASSIVE_TOKEN] = 0.0
        emb[MASSIVE_TOKEN, 0] = 1.0  # its normed state is 8 * e_0
        attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[:, 0] = 0.0
        mlp.gate_proj.weight[5] = 0.0
        mlp.up_proj.weight[5] = 0.0
        mlp.gate_proj.weight[5, 0] = mlp.up_proj.weight[5, 0] = 7.0  # act_5 = silu(56) * 56 ~ 3,100
        mlp.down_proj.weight.mul_(10.0)  # the MLP's share of the residual matters
    return export(model, "states", path)


def test_per_token_beats_per_tensor_on_a_massive_activation(tmp_path):
    src = massive_activation_graph(tmp_path / "massive.onnx")
    calibration = feeds(2, 4, 16, seed=0, pad=False)
    held_out = feeds(2, 4, 16, seed=1, pad=False)
    for batch in calibration + held_out:
        batch["input_ids"][:, 0] = MASSIVE_TOKEN  # the first token of every text, like a BOS
    scores = {}
    for mode in ("per-tensor", "per-token"):
        dst = tmp_path / f"{mode}.onnx"
        report = quantize_onnx(src, dst, calibration, activations=mode, alphas=(None,), keep_fp32=[])
        down = [m for n, m in report["matmuls"].items() if m["shape"] == [128, 64]]
        assert down and all(m["simulated_error"][mode] >= 0 for m in down)
        scores[mode] = min_row_cosine(run(src, held_out), run(dst, held_out))
    # measured: per-token 0.978 (rows attending to the massive token lose a little), per-tensor < 0
    assert scores["per-token"] >= 0.95, scores
    assert scores["per-tensor"] < 0.9, scores


# ---------------------------------------------------------------------------- settings
def test_keep_fp32_is_honoured(graphs, tmp_path):
    names = sorted(t.node for t in find_targets(onnx.load(str(graphs["qwen3"])))[0])[:2]
    dst = tmp_path / "int8.onnx"
    report = quantize_onnx(graphs["qwen3"], dst, CALIBRATION, keep_fp32=names)
    assert report["keep_fp32"] == names
    assert all(report["matmuls"][n]["activations"] == "fp32" for n in names)
    kept = {n.name for n in onnx.load(str(dst)).graph.node if n.op_type == "MatMul"}
    assert set(names) <= kept
    assert op_count(dst, "MatMulIntegerToFloat") == len(report["matmuls"]) - 2


def test_fallbacks_searched_while_below_target(graphs, tmp_path):
    report = quantize_onnx(graphs["bert"], tmp_path / "int8.onnx", CALIBRATION, target=1.01, max_keep=4)
    kept = [t["keep_fp32"] for t in report["trials"] if t["keep_fp32"]]
    assert kept == [1, 2, 4]  # 1, 2, 4, ... up to max_keep
    assert 1 <= len(report["keep_fp32"]) <= 4
    assert report["agreement"] == max(t["agreement"] for t in report["trials"])


def test_deterministic(graphs, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    ra = quantize_onnx(graphs["qwen3"], a, CALIBRATION, activations="per-token")
    rb = quantize_onnx(graphs["qwen3"], b, CALIBRATION, activations="per-token")
    assert a.read_bytes() == b.read_bytes()
    assert ra == rb


def test_smoothing_folded_where_exact(graphs, tmp_path):
    dst = tmp_path / "q.onnx"
    qwen = quantize_onnx(graphs["qwen3"], dst, CALIBRATION, activations="per-token", alphas=(0.5,))
    how = {n.split("/")[-2]: m["smoothing"] for n, m in qwen["matmuls"].items() if "layers.0" in n}
    assert (
        how["q_proj"] == how["k_proj"] == how["v_proj"] == "folded into /model/layers.0/input_layernorm/Mul_1"
    )
    assert how["down_proj"] == "folded into the output columns of /model/layers.0/mlp/up_proj/MatMul"
    assert how["o_proj"] == "Mul"  # attention output: no exact place to fold
    assert min_row_cosine(run(graphs["qwen3"], HELD_OUT), run(dst, HELD_OUT)) >= TINY_FLOOR
    bert = quantize_onnx(
        graphs["bert"], tmp_path / "b.onnx", CALIBRATION, activations="per-token", alphas=(0.5,)
    )
    assert {m["smoothing"] for m in bert["matmuls"].values()} == {
        "Mul"
    }  # BERT's norm also feeds the residual


def test_per_row_quantiser_without_opset_21(graphs, tmp_path, monkeypatch):
    """Where the version converter fails, the per-row scale takes a Div before QuantizeLinear."""
    blocked = tmp_path / "blocked.onnx"
    assert (
        quantize_onnx(graphs["qwen3"], blocked, CALIBRATION, activations="per-token")["opset"] == "18 -> 21"
    )
    monkeypatch.setattr(onnx_quant, "_opset_21", lambda model: (model, "18 (kept)"))
    divided = tmp_path / "div.onnx"
    report = quantize_onnx(graphs["qwen3"], divided, CALIBRATION, activations="per-token")
    assert report["opset"] == "18 (kept)" and op_count(divided, "Div") > op_count(blocked, "Div")
    for a, b in zip(run(blocked, HELD_OUT), run(divided, HELD_OUT), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)  # the same quantiser, up to rounding ties


def test_reduce_range_keeps_weights_to_7_bits(graphs, tmp_path):
    dst = tmp_path / "int8.onnx"
    report = quantize_onnx(graphs["bert"], dst, CALIBRATION, reduce_range=True)
    assert report["weight_bits"] == 7
    weights = [
        numpy_helper.to_array(t)
        for t in onnx.load(str(dst)).graph.initializer
        if t.data_type == TensorProto.INT8
    ]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 63


def test_lm_head_stays_fp32(tmp_path):
    src = export(tiny_qwen3(causal_lm=True), "logits", tmp_path / "lm.onnx")
    report = quantize_onnx(src, tmp_path / "int8.onnx", CALIBRATION)
    assert any("LM head" in why for why in report["skipped"].values())
    assert all(m["shape"][1] != VOCAB for m in report["matmuls"].values())


@pytest.mark.slow
def test_dynamo_exported_graph(tmp_path):
    src = export(tiny_qwen3(), "last", tmp_path / "dynamo.onnx", dynamo=True)
    dst = tmp_path / "int8.onnx"
    report = quantize_onnx(src, dst, CALIBRATION, activations="per-token")
    assert len(report["matmuls"]) == 14
    assert min_row_cosine(run(src, HELD_OUT), run(dst, HELD_OUT)) >= TINY_FLOOR


# ---------------------------------------------------------------------------- errors
def test_graph_without_quantisable_matmul(tmp_path):
    table = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((VOCAB, 8)).astype(np.float32), "emb"
    )
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "input_ids"], ["h"]),
            helper.make_node("ReduceMean", ["h", "axes"], ["out"], keepdims=0),
        ],
        "no-matmul",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 8])],
        [table, numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    src = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(src))
    with pytest.raises(ValueError, match="no quantisable MatMul"):
        quantize_onnx(src, tmp_path / "int8.onnx", CALIBRATION)


def _bad_feeds() -> dict[str, list]:
    good = feeds(1, 2, 8, seed=0)[0]
    return {
        "empty": ([], "calibration is empty"),
        "missing mask": ([{"input_ids": good["input_ids"]}], "graph takes"),
        "extra input": ([{**good, "token_type_ids": good["input_ids"]}], "graph takes"),
        "float ids": ([{**good, "input_ids": good["input_ids"].astype(np.float32)}], "int64"),
        "1-D": ([{k: v[0] for k, v in good.items()}], "int64 \\(batch, seq\\)"),
        "shapes differ": ([{**good, "attention_mask": good["attention_mask"][:, :4]}], "differ in shape"),
    }


@pytest.mark.parametrize("case", list(_bad_feeds()))
def test_bad_feeds_named(graphs, tmp_path, case):
    bad, message = _bad_feeds()[case]
    with pytest.raises(ValueError, match=message):
        quantize_onnx(graphs["bert"], tmp_path / "int8.onnx", bad)


def test_bad_settings_named(graphs, tmp_path):
    with pytest.raises(ValueError, match="keep_fp32 names"):
        quantize_onnx(graphs["bert"], tmp_path / "x.onnx", CALIBRATION, keep_fp32=["nope"])
    with pytest.raises(ValueError, match="activations="):
        quantize_onnx(graphs["bert"], tmp_path / "x.onnx", CALIBRATION, activations="per-channel")
    with pytest.raises(ValueError, match="alpha"):
        quantize_onnx(graphs["bert"], tmp_path / "x.onnx", CALIBRATION, alphas=(1.5,))


# ---------------------------------------------------------------------------- real weights
@pytest.mark.slow
@pytest.mark.shared_data
def test_minilm_real_weights(minilm_dir, shared_data_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from embedforge.corpus import iter_documents

    docs = [
        d.full_text
        for _, d in zip(range(48), iter_documents(shared_data_dir / "scifact" / "corpus.jsonl"), strict=False)
    ]
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))

    def batches(texts: list[str]) -> list[dict[str, np.ndarray]]:
        enc = tok(texts, truncation=True, max_length=128, padding=True, return_tensors="np")
        return [{k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}]

    model = AutoModel.from_pretrained(str(minilm_dir), dtype=torch.float32, attn_implementation="eager")
    src = export(model, "mean", tmp_path / "minilm.onnx")
    dst = tmp_path / "int8.onnx"
    report = quantize_onnx(src, dst, batches(docs[32:]))  # calibrate on 16 documents, evaluate on 32 others
    assert report["agreement"] >= REAL_FLOOR
    assert min_row_cosine(run(src, batches(docs[:32])), run(dst, batches(docs[:32]))) >= REAL_FLOOR
