"""The ``onnx`` backend against fp32 torch, on tiny random checkpoints and real MiniLM weights.

The graph is the same arithmetic as torch in another runtime, so embeddings (before and after
normalisation) and reranker states and scores must match fp32 torch to 1e-5, with left and right
padding, batch 1 and batches of varying lengths. ``onnx-int8`` is an approximation checked with
the torch-int8 floors (cosine >= 0.99, scores within 0.05) once its quantizer exists.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from tests.texts import DOCUMENTS, QUERIES

from embedforge import Embedder, Reranker
from embedforge.export import MANIFEST, ExportError, builtin_calibration_texts, export, read_manifest
from embedforge.export_cli import register
from embedforge.runtime import BACKENDS, TorchRuntime
from embedforge.runtime.onnx import (
    EMBEDDING_OUTPUT,
    GRAPH_FILE,
    HEAD_ROWS_FILE,
    STATE_OUTPUT,
    SUPPORTED_MODEL_TYPES,
    EmbeddingGraph,
    OnnxRuntime,
    export_graph,
)

pytest.importorskip(
    "onnxruntime", reason="the onnx backend needs onnxruntime (pip install 'embedforge[onnx]')"
)

ATOL = 1e-5
TEXTS = [*QUERIES, *DOCUMENTS]
HAS_QUANTIZER = importlib.util.find_spec("embedforge.runtime.onnx_quant") is not None


@pytest.fixture(scope="module")
def onnx_embedder_dir(tmp_path_factory, tiny_embedder_dir):
    out = tmp_path_factory.mktemp("onnx-embedder") / "export"
    export(str(tiny_embedder_dir), "onnx", out)
    return out


@pytest.fixture(scope="module")
def cli_reranker_export(tmp_path_factory, tiny_reranker_dir):
    """The reranker exported by the command: its directory and the summary it printed."""
    out = tmp_path_factory.mktemp("onnx-reranker") / "export"
    args = _export_parser().parse_args(
        ["export", str(tiny_reranker_dir), "--backend", "onnx", "--kind", "reranker", "--out", str(out)]
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert args.func(args) == 0
    return out, json.loads(printed.getvalue())


@pytest.fixture(scope="module")
def onnx_reranker_dir(cli_reranker_export):
    return cli_reranker_export[0]


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedforge")
    register(parser.add_subparsers(dest="command"))
    return parser


def _pairs() -> list[tuple[str, str]]:
    return [(q, d) for q in QUERIES[:3] for d in DOCUMENTS[:6]]


# ---------------------------------------------------------------------------- embedder
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_embedder_matches_fp32_torch(onnx_embedder_dir, tiny_embedder_dir, padding_side):
    ref = Embedder.from_pretrained(tiny_embedder_dir, device="cpu", padding_side=padding_side)
    emb = Embedder.from_pretrained(onnx_embedder_dir, backend="onnx", padding_side=padding_side)
    assert isinstance(emb.runtime, OnnxRuntime) and emb.runtime.info.last_position
    for budget in (64, 512, 100_000):  # batch 1 for the longest texts up to one batch of all
        np.testing.assert_allclose(
            emb.encode(TEXTS, batch_tokens=budget), ref.encode(TEXTS, batch_tokens=budget), atol=ATOL, rtol=0
        )
    batch = ref.collate(ref.tokenize(TEXTS))  # varying lengths, padded on padding_side
    with torch.inference_mode():
        raw = ref.runtime.embed(**batch, pooling="lasttoken")  # before normalisation
        torch.testing.assert_close(emb.runtime.embed(**batch, pooling="lasttoken"), raw, atol=ATOL, rtol=0)
        # the last-token graph's output is the last-position state: usable as such
        torch.testing.assert_close(emb.runtime.last_position_states(**batch), raw, atol=ATOL, rtol=0)


def test_embedder_batched_equals_one_by_one(onnx_embedder_dir):
    emb = Embedder.from_pretrained(onnx_embedder_dir, backend="onnx")
    batched = emb.encode(DOCUMENTS)
    single = np.stack([emb.encode(d) for d in DOCUMENTS])
    np.testing.assert_allclose(batched, single, atol=ATOL, rtol=0)


def test_export_directory_holds_the_graph_not_the_weights(onnx_embedder_dir, tiny_embedder_dir):
    import embedforge

    names = {p.name for p in onnx_embedder_dir.iterdir()}
    assert {GRAPH_FILE, MANIFEST, "config.json", "tokenizer.json", "modules.json"} <= names
    assert not any(n.endswith(".safetensors") for n in names)
    manifest = read_manifest(onnx_embedder_dir)
    assert manifest is not None
    assert (manifest.backend, manifest.kind, manifest.embedforge_version) == (
        "onnx",
        "embedder",
        embedforge.__version__,
    )
    graph = manifest.onnx["graph"]
    assert graph["inputs"] == ["input_ids", "attention_mask"] and graph["outputs"] == [EMBEDDING_OUTPUT]
    assert graph["pooling"] == "lasttoken" and graph["opset"] >= 18 and graph["last_position"]
    assert len(manifest.onnx["sha256"]) == 64 and manifest.onnx["head_tokens"] == []
    fp32 = Embedder.from_pretrained(tiny_embedder_dir, device="cpu")
    emb = Embedder.from_pretrained(onnx_embedder_dir, backend="onnx")
    assert (emb.pooling, emb.prompts, emb.max_length, emb.normalize) == (
        fp32.pooling,
        fp32.prompts,
        fp32.max_length,
        fp32.normalize,
    )
    assert emb.fingerprint != fp32.fingerprint  # caches never mix backends


def test_embed_refuses_what_the_graph_does_not_compute(onnx_embedder_dir):
    emb = Embedder.from_pretrained(onnx_embedder_dir, backend="onnx")
    batch = emb.collate(emb.tokenize(["hello"]))
    with pytest.raises(
        ValueError, match=r"returns pooled embeddings \(pooling 'lasttoken'\), not token states"
    ):
        emb.runtime.embed(**batch, pooling=None)
    with pytest.raises(ValueError, match="this ONNX graph pools with 'lasttoken', not 'mean'"):
        emb.runtime.embed(**batch, pooling="mean")
    with pytest.raises(ValueError, match=r"keeps LM-head rows for tokens \[\] only"):
        emb.runtime.head_logits(torch.zeros(1, 64), (1, 2))
    assert emb.runtime.supports_prefix_cache is False
    with pytest.raises(ValueError, match="pools with 'lasttoken', not 'mean'"):
        Embedder.from_pretrained(onnx_embedder_dir, backend="onnx", pooling="mean")
    with pytest.raises(TypeError, match="no torch module"):
        emb.model  # noqa: B018  (training and saving need the torch runtime)


@pytest.mark.slow
def test_backend_onnx_on_a_plain_checkpoint_exports_on_the_fly(tiny_embedder_dir):
    ref = Embedder.from_pretrained(tiny_embedder_dir, device="cpu")
    emb = Embedder.from_pretrained(tiny_embedder_dir, backend="onnx")
    runtime = emb.runtime
    assert isinstance(runtime, OnnxRuntime) and runtime.graph.is_file()
    np.testing.assert_allclose(emb.encode(TEXTS), ref.encode(TEXTS), atol=ATOL, rtol=0)
    tmp = runtime.graph.parent
    del emb, runtime
    import gc

    gc.collect()
    assert not tmp.exists()  # the temporary export goes with the runtime


# ---------------------------------------------------------------------------- reranker
def test_reranker_matches_fp32_torch(onnx_reranker_dir, tiny_reranker_dir):
    ref = Reranker.from_pretrained(tiny_reranker_dir, device="cpu", prefix_reuse=False)
    rr = Reranker.from_pretrained(onnx_reranker_dir, backend="onnx")
    assert isinstance(rr.runtime, OnnxRuntime) and not rr.runtime.supports_prefix_cache
    pairs = _pairs()
    for budget in (128, 100_000):
        got, want = rr.score_pairs(pairs, batch_tokens=budget), ref.score_pairs(pairs, batch_tokens=budget)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    single = np.array([rr.score_pairs([p])[0] for p in pairs[:4]])
    np.testing.assert_allclose(single, ref.score_pairs(pairs[:4]), atol=ATOL, rtol=0)
    ids = ref.tokenize_pairs(pairs)
    for batch in (ref.collate(ids), dict(zip(("input_ids", "attention_mask"), _right_pad(ids), strict=True))):
        with torch.inference_mode():
            states = rr.runtime.last_position_states(**batch)
            want_states = ref.runtime.last_position_states(**batch)
            torch.testing.assert_close(states, want_states, atol=ATOL, rtol=0)
            torch.testing.assert_close(
                rr.logits_from_hidden(states), ref.logits_from_hidden(want_states), atol=ATOL, rtol=0
            )
    assert (onnx_reranker_dir / HEAD_ROWS_FILE).is_file()
    with pytest.raises(ValueError, match="gives last-position states, not embeddings"):
        rr.runtime.embed(**ref.collate(ids[:1]), pooling="lasttoken")


def _right_pad(ids):
    from embedforge.batching import pad_right

    return pad_right(ids, 0)


def test_reranker_scores_equal_the_prefix_cached_torch_path(onnx_reranker_dir, tiny_reranker_dir):
    ref = Reranker.from_pretrained(tiny_reranker_dir, device="cpu")  # prefix reuse on
    rr = Reranker.from_pretrained(onnx_reranker_dir, backend="onnx")
    query = QUERIES[0]
    np.testing.assert_allclose(rr.score(query, DOCUMENTS), ref.score(query, DOCUMENTS), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------- real weights
@pytest.mark.slow
def test_minilm_real_weights_match_fp32_torch(minilm_dir, tmp_path):
    out = tmp_path / "minilm-onnx"
    export(str(minilm_dir), "onnx", out)
    ref = Embedder.from_pretrained(minilm_dir, device="cpu")
    emb = Embedder.from_pretrained(out, backend="onnx")
    assert emb.runtime.info.pooling == "mean" and not emb.runtime.info.last_position
    np.testing.assert_allclose(emb.encode(TEXTS), ref.encode(TEXTS), atol=ATOL, rtol=0)
    batch = ref.collate(ref.tokenize(TEXTS))
    with torch.inference_mode():
        want = ref.runtime.embed(**batch, pooling="mean")
        torch.testing.assert_close(emb.runtime.embed(**batch, pooling="mean"), want, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="not last-position states"):
        emb.runtime.last_position_states(**batch)


@pytest.mark.slow
def test_cls_pooling_exports(minilm_dir, tmp_path):
    pooling = "cls"
    ref = Embedder.from_pretrained(minilm_dir, device="cpu", pooling=pooling)
    attention = ref.model.config._attn_implementation
    info = export_graph(ref.model, tmp_path, kind="embedder", pooling=pooling, causal=False)
    assert ref.model.config._attn_implementation == attention  # restored after the export
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / GRAPH_FILE)).graph.node}
    assert "IsNaN" not in ops and "Softmax" in ops  # eager attention: no safe-softmax guard per layer
    runtime = OnnxRuntime(tmp_path / GRAPH_FILE, info)
    batch = ref.collate(ref.tokenize(TEXTS[:5]))
    with torch.inference_mode():
        want = ref.runtime.embed(**batch, pooling=pooling)
    torch.testing.assert_close(runtime.embed(**batch, pooling=pooling), want, atol=ATOL, rtol=0)


@pytest.mark.slow
def test_a_llama_decoder_exports_with_external_weights(tmp_path):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    module = LlamaModel(config).eval()
    info = export_graph(module, tmp_path, kind="embedder", pooling="lasttoken", external_data=True)
    assert info.files == (GRAPH_FILE, GRAPH_FILE + ".data")  # the layout of models past 1 GiB
    runtime, ref = OnnxRuntime(tmp_path / GRAPH_FILE, info), TorchRuntime(module)
    ids = torch.randint(0, 300, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, :4], mask[1, :1] = 0, 0  # left padding
    for m in (mask, mask.flip(1)):
        with torch.inference_mode():
            want = ref.embed(ids, m, "lasttoken")
        torch.testing.assert_close(runtime.embed(ids, m, "lasttoken"), want, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------- errors
def test_an_unsupported_architecture_is_refused_naming_the_supported(tmp_path):
    from transformers import GPT2Config, GPT2Model

    module = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(
        ValueError, match=r"model type 'gpt2' is not supported; ONNX export supports \['bert'"
    ):
        export_graph(module, tmp_path, kind="embedder", pooling="mean")
    assert not any(tmp_path.iterdir())
    assert "qwen3" in SUPPORTED_MODEL_TYPES and "llama" in SUPPORTED_MODEL_TYPES


def test_export_of_an_unsupported_checkpoint_writes_nothing(minilm_dir, tmp_path):
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    ckpt = tmp_path / "roberta"
    RobertaModel(
        RobertaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(ckpt)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(ckpt)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"cannot export .* to ONNX: model type 'roberta' is not supported"):
        export(str(ckpt), "onnx", out)
    assert not out.exists()


def test_onnx_export_loaded_as_another_backend_is_refused(onnx_embedder_dir):
    with pytest.raises(ExportError, match="exported for backend 'onnx', not 'torch'"):
        Embedder.from_pretrained(onnx_embedder_dir)
    with pytest.raises(ExportError, match="exported for backend 'onnx', not 'onnx-int8'"):
        Embedder.from_pretrained(onnx_embedder_dir, backend="onnx-int8")
    with pytest.raises(ExportError, match="exported embedder, not a reranker"):
        Reranker.from_pretrained(onnx_embedder_dir, backend="onnx")


def test_onnx_export_of_another_version_or_incomplete_is_refused(onnx_embedder_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(onnx_embedder_dir, old)
    data = json.loads((old / MANIFEST).read_text())
    data["embedforge_version"] = "0.0.9"
    (old / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ExportError, match=r"exported by embedforge 0.0.9 .* --backend onnx --out DIR"):
        Embedder.from_pretrained(old, backend="onnx")
    broken = tmp_path / "broken"
    shutil.copytree(onnx_embedder_dir, broken)
    (broken / GRAPH_FILE).unlink()
    with pytest.raises(ExportError, match=r"the export is incomplete \(\['model.onnx'\]\); export it again"):
        Embedder.from_pretrained(broken, backend="onnx")


def test_onnx_runs_on_cpu_in_float32_only(onnx_embedder_dir):
    with pytest.raises(ValueError, match=r"backend 'onnx' runs on CPU .*not device='cuda'"):
        Embedder.from_pretrained(onnx_embedder_dir, backend="onnx", device="cuda")
    with pytest.raises(ValueError, match="backend 'onnx' runs in float32, not dtype='bf16'"):
        Embedder.from_pretrained(onnx_embedder_dir, backend="onnx", dtype="bf16")


def test_missing_onnxruntime_names_the_extra(onnx_embedder_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(ImportError, match=r"need 'onnxruntime'.*pip install 'embedforge\[onnx\]'"):
        Embedder.from_pretrained(onnx_embedder_dir, backend="onnx")


def test_missing_onnxscript_names_the_extra(tiny_embedder_dir, tmp_path, monkeypatch):
    emb = Embedder.from_pretrained(tiny_embedder_dir, device="cpu")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"need 'onnxscript'.*pip install 'embedforge\[onnx\]'"):
        export_graph(emb.model, tmp_path, kind="embedder", pooling="lasttoken")


def test_embedding_graph_refuses_an_unknown_pooling(tiny_embedder_dir):
    emb = Embedder.from_pretrained(tiny_embedder_dir, device="cpu")
    with pytest.raises(ValueError, match="'sum' is not a valid Pooling"):
        EmbeddingGraph(emb.model, "sum", causal=True)


# ---------------------------------------------------------------------------- commands and server
def test_export_command_round_trip(cli_reranker_export, tiny_reranker_dir, tmp_path):
    out, summary = cli_reranker_export
    assert summary["backend"] == "onnx" and summary["kind"] == "reranker"
    assert summary["onnx"]["output"] == STATE_OUTPUT and summary["onnx"]["files"] == [GRAPH_FILE]
    ref = Reranker.from_pretrained(tiny_reranker_dir, device="cpu")
    rr = Reranker.from_pretrained(out, backend="onnx")
    np.testing.assert_allclose(rr.score_pairs(_pairs()), ref.score_pairs(_pairs()), atol=ATOL, rtol=0)
    args = _export_parser().parse_args(
        ["export", str(tiny_reranker_dir), "--backend", "onnx", "--out", str(tmp_path / "x")]
        + ["--calibration", str(tmp_path / "c.jsonl")]
    )
    with pytest.raises(ValueError, match="--calibration applies to the int8 backends, not --backend onnx"):
        args.func(args)


def test_backend_names_reach_every_command_parser(tmp_path):
    from embedforge.cli import build_parser
    from embedforge.spec import ModelSpec

    assert {"onnx", "onnx-int8"} <= set(BACKENDS)
    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    for backend in ("onnx", "onnx-int8"):
        args = build_parser().parse_args(["embed", str(src), "-o", str(out), "--backend", backend])
        assert ModelSpec.from_args(args).backend == backend


def test_model_spec_loads_the_onnx_backend(onnx_embedder_dir, tmp_path):
    from embedforge.cli import main
    from embedforge.spec import ModelSpec

    spec = ModelSpec(str(onnx_embedder_dir), backend="onnx")
    assert isinstance(spec.load_embedder().runtime, OnnxRuntime)
    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    src.write_text("\n".join(DOCUMENTS[:4]) + "\n")
    assert (
        main(["embed", str(src), "-o", str(out), "--model", str(onnx_embedder_dir), "--backend", "onnx"]) == 0
    )
    want = Embedder.from_pretrained(onnx_embedder_dir, backend="onnx").encode(DOCUMENTS[:4])
    np.testing.assert_allclose(np.load(out), want, atol=ATOL, rtol=0)


def test_server_with_backend_onnx(onnx_embedder_dir, onnx_reranker_dir, tiny_embedder_dir):
    pytest.importorskip("fastapi", reason="the server extra is not installed")
    import time

    from tests.server.conftest import live_server

    from embedforge.server import ServerSettings, create_app

    settings = ServerSettings(
        embedder=str(onnx_embedder_dir),
        reranker=str(onnx_reranker_dir),
        embedder_name="e",
        reranker_name="r",
        backend="onnx",
    )
    with live_server(create_app(settings)) as srv, srv.client() as c:
        deadline = time.monotonic() + 120
        while (health := c.get("/health")).status_code != 200:
            if "failed to load" in health.text:
                settings.embedder_spec().load_embedder()  # raise the loading error here
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.05)
        body = c.post("/v1/embeddings", json={"model": "e", "input": DOCUMENTS[:3]}).json()
        got = np.array([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])])
        want = Embedder.from_pretrained(tiny_embedder_dir, device="cpu").encode(DOCUMENTS[:3])
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
        r = c.post("/v1/rerank", json={"model": "r", "query": QUERIES[0], "documents": DOCUMENTS[:4]})
        assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------- onnx-int8
needs_quantizer = pytest.mark.skipif(
    not HAS_QUANTIZER, reason="embedforge.runtime.onnx_quant (quantize_onnx) is not written yet"
)


@needs_quantizer
def test_onnx_int8_embedder_export(tiny_embedder_dir, tmp_path):
    out = tmp_path / "int8"
    texts = builtin_calibration_texts(16)
    manifest = export(str(tiny_embedder_dir), "onnx-int8", out, calibration_texts=texts)
    assert manifest.int8 and manifest.calibration["texts"] == 16 and len(manifest.calibration["sha256"]) == 64
    assert manifest.calibration["source"] == "texts given"
    fp32 = Embedder.from_pretrained(tiny_embedder_dir, device="cpu")
    emb = Embedder.from_pretrained(out, backend="onnx-int8")
    assert isinstance(emb.runtime, OnnxRuntime) and emb.runtime.backend == "onnx-int8"
    assert ((fp32.encode(DOCUMENTS) * emb.encode(DOCUMENTS)).sum(1)).min() >= 0.99
    assert emb.fingerprint != fp32.fingerprint
    with pytest.raises(ExportError, match="exported for backend 'onnx-int8', not 'onnx'"):
        Embedder.from_pretrained(out, backend="onnx")


@needs_quantizer
def test_onnx_int8_reranker_export(tiny_reranker_dir, tmp_path):
    out = tmp_path / "int8-rr"
    export(
        str(tiny_reranker_dir),
        "onnx-int8",
        out,
        kind="reranker",
        calibration_texts=builtin_calibration_texts(8),
    )
    fp32 = Reranker.from_pretrained(tiny_reranker_dir, device="cpu")
    rr = Reranker.from_pretrained(out, backend="onnx-int8")
    assert np.abs(rr.score_pairs(_pairs()) - fp32.score_pairs(_pairs())).max() <= 0.05


def test_evaluation_runs_on_the_onnx_backend_with_the_same_metrics(onnx_embedder_dir, tiny_embedder_dir):
    """Evaluation reads the model type from the graph (there is no torch module to ask): the
    instructions and the metrics equal those of the fp32 torch model."""
    from embedforge.evaluation import evaluate_retrieval
    from embedforge.evaluation.data import RetrievalData
    from embedforge.evaluation.instructions import is_instruction_aware

    onnx_emb = Embedder.from_pretrained(onnx_embedder_dir, backend="onnx")
    torch_emb = Embedder.from_pretrained(tiny_embedder_dir)
    assert is_instruction_aware(onnx_emb) and is_instruction_aware(torch_emb)  # tiny Qwen3
    data = RetrievalData(
        name="tiny",
        corpus_ids=[f"d{i}" for i in range(12)],
        corpus_texts=[f"document {i} about topic {i % 3}" for i in range(12)],
        query_ids=[f"q{i}" for i in range(3)],
        query_texts=[f"which document is about topic {i}" for i in range(3)],
        qrels={f"q{i}": {f"d{i}": 1, f"d{i + 3}": 1} for i in range(3)},
    )
    a = evaluate_retrieval(onnx_emb, data, show_progress=False).first_stage.metrics
    b = evaluate_retrieval(torch_emb, data, show_progress=False).first_stage.metrics
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-9 for k in a)
