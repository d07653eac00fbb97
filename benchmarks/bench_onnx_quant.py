"""int8 ONNX graphs (issue 14, part 2): each quantisation choice's quality against fp32, and its speed.

For all-MiniLM-L6-v2 (an encoder, mean pooling, max 256 tokens) and SmolLM2-135M-Instruct (a
Llama decoder with massive activations, last-token pooling, max 128 tokens; weights dequantised
from a 4-bit GGUF, see ``bench_backends.prepare_smollm2``), this script exports a plain fp32 graph
(``torch.onnx.export`` of the HF model with the pooling: inputs ``input_ids``/``attention_mask``,
output the pooled embedding), quantises it with
:func:`embedforge.runtime.onnx_quant.quantize_onnx` under several settings (and with ORT's own
``quantize_dynamic`` as a baseline), calibrating on SciFact documents 4000.. and measuring the
per-document cosine against the fp32 graph on SciFact documents 0.. (disjoint). The chosen
setting (``auto``) is also measured on ``--final-docs`` documents.

Speed (indicative only on a shared machine): every graph in ONE process, interleaved, best of
``--repeats`` over the same batches of 32 documents; ratios against the fp32 graph.

Usage::

    python benchmarks/bench_onnx_quant.py --docs 200 --final-docs 1000 \\
        --out benchmarks/results/onnx_quant_dev.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_backends import CAVEAT, minilm_dir, prepare_smollm2, scifact_texts  # noqa: E402

from embedforge.runtime.onnx_quant import quantize_onnx, session  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "per-tensor": {"activations": "per-tensor", "alphas": (None,), "keep_fp32": []},
    "per-tensor + SmoothQuant": {"activations": "per-tensor", "keep_fp32": []},
    "per-token": {"activations": "per-token", "alphas": (None,), "keep_fp32": []},
    "per-token + SmoothQuant": {"activations": "per-token", "keep_fp32": []},
    "per-token-residual + SmoothQuant": {"activations": "per-token-residual", "keep_fp32": []},
    "auto (target 0.99)": {"target": 0.99},
    "auto (target 0.997)": {"target": 0.997},
    "auto (target 0.997), 7-bit weights": {"target": 0.997, "reduce_range": True},
}
CHOSEN = "auto (target 0.997)"  # measured again on --final-docs documents


class Pooled(nn.Module):
    """A HF backbone with pooling: mean over attended tokens, or the last attended token."""

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model, self.pooling = model, pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, S, H)
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, S, 1)
            return (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)
        last = (torch.arange(attention_mask.shape[1]).unsqueeze(0) * attention_mask).argmax(1)  # (B,)
        return h[torch.arange(h.shape[0]), last]  # (B, H)


def export_graph(model_dir: Path, pooling: str, path: Path, dynamo: bool) -> Path:
    from transformers import AutoModel

    # eager attention: an SDPA export adds Where/IsNaN passes over every (B, heads, S, S) score
    # tensor (15% of MiniLM's fp32 time), which neither fp32 nor int8 needs
    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.randint(5, 100, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    kw: dict[str, Any] = {"input_names": ["input_ids", "attention_mask"], "output_names": ["pooled"]}
    if dynamo:
        b, s = torch.export.Dim("batch"), torch.export.Dim("seq")
        kw["dynamic_shapes"] = {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}}
    else:
        axes = {0: "batch", 1: "seq"}
        kw["dynamic_axes"] = {"input_ids": axes, "attention_mask": axes, "pooled": {0: "batch"}}
        kw["opset_version"] = 18
    with torch.inference_mode():
        torch.onnx.export(Pooled(model, pooling), (ids, mask), str(path), dynamo=dynamo, **kw)
    return path


def feeds(tokenizer: Any, texts: list[str], max_length: int, batch: int) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i : i + batch], truncation=True, max_length=max_length, padding=True)
        out.append({k: np.asarray(enc[k], np.int64) for k in ("input_ids", "attention_mask")})
    return out


def run_all(sess: Any, batches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    return [sess.run(None, b)[0] for b in batches]


def cosines(ref: list[np.ndarray], out: list[np.ndarray]) -> dict[str, float]:
    r, o = np.concatenate(ref).astype(np.float64), np.concatenate(out).astype(np.float64)
    cos = (r * o).sum(1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1))
    return {
        "min_cosine": round(float(cos.min()), 5),
        "mean_cosine": round(float(cos.mean()), 6),
        "texts": len(cos),
    }


def ort_baseline(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)


def bench_model(
    name: str, model_dir: Path, pooling: str, max_length: int, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    calib = feeds(tok, scifact_texts(4000, args.calibration), max_length, 16)
    evaluation = feeds(tok, scifact_texts(0, args.docs), max_length, 32)
    t0 = time.perf_counter()
    src = export_graph(model_dir, pooling, tmp / f"{name}.onnx", args.exporter == "dynamo")
    result: dict[str, Any] = {
        "max_length": max_length,
        "pooling": pooling,
        "export_seconds": round(time.perf_counter() - t0, 1),
    }
    fp32 = session(src, args.threads)
    ref = run_all(fp32, evaluation)
    sessions: dict[str, Any] = {"fp32": fp32}
    rows: dict[str, Any] = {}
    dst = tmp / f"{name}-ort.onnx"
    ort_baseline(src, dst)
    sessions["ORT quantize_dynamic"] = session(dst, args.threads)
    rows["ORT quantize_dynamic"] = cosines(ref, run_all(sessions["ORT quantize_dynamic"], evaluation))
    reports = {}
    for variant, settings in VARIANTS.items():
        dst = tmp / f"{name}-{len(sessions)}.onnx"
        t0 = time.perf_counter()
        report = quantize_onnx(src, dst, calib, **settings)
        seconds = time.perf_counter() - t0
        sessions[variant] = session(dst, args.threads)
        rows[variant] = {
            **cosines(ref, run_all(sessions[variant], evaluation)),
            "calibration_agreement": round(report["agreement"], 5),
            "modes": report["modes"],
            "keep_fp32": len(report["keep_fp32"]),
            "quantize_seconds": round(seconds, 1),
        }
        reports[variant] = report
        print(name, variant, rows[variant], flush=True)
    # speed: interleaved, best of repeats, same batches for every graph
    batches = evaluation[: args.speed_batches]
    best = {k: float("inf") for k in sessions}
    for s in sessions.values():
        run_all(s, batches[:1])
    for _ in range(args.repeats):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            run_all(s, batches)
            best[k] = min(best[k], time.perf_counter() - t0)
    for k in rows:
        rows[k]["speedup_vs_fp32"] = round(best["fp32"] / best[k], 2)
    result["fp32_seconds"] = round(best["fp32"], 3)
    result["table"] = rows
    result["chosen"] = CHOSEN
    result["chosen_report"] = reports[CHOSEN]
    if args.final_docs > args.docs:
        final = feeds(tok, scifact_texts(0, args.final_docs), max_length, 32)
        result["chosen_final"] = cosines(run_all(fp32, final), run_all(sessions[CHOSEN], final))
        print(name, CHOSEN, "on", args.final_docs, "documents:", result["chosen_final"], flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=["minilm", "smollm2"])
    p.add_argument("--docs", type=int, default=200, help="SciFact documents for the table's cosines")
    p.add_argument("--final-docs", type=int, default=1000, help="documents for the chosen setting's figure")
    p.add_argument("--calibration", type=int, default=64, help="calibration texts (SciFact docs 4000..)")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    p.add_argument("--speed-batches", type=int, default=3, help="batches of 32 documents timed")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--smollm2", default=str(Path(tempfile.gettempdir()) / "embedforge-smollm2"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "onnx_quant_dev.json"))
    args = p.parse_args(argv)
    import onnx
    import onnxruntime

    out: dict[str, Any] = {
        "note": "cosines against the fp32 graph; speed indicative (shared machine), interleaved, batches of 32",
        "command": "python benchmarks/bench_onnx_quant.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "versions": {
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
        },
    }
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        if "minilm" in args.models:
            out["minilm"] = bench_model("minilm", minilm_dir(), "mean", 256, args, tmp)
        if "smollm2" in args.models:
            smol = prepare_smollm2(Path(args.smollm2))
            out["smollm2"] = {**bench_model("smollm2", smol, "last", 128, args, tmp), "caveat": CAVEAT}
    for name in ("minilm", "smollm2"):
        if name in out:
            print(f"\n{name}: fp32 graph {out[name]['fp32_seconds']} s")
            print(f"{'method':28s} {'min cos':>8s} {'mean cos':>9s} {'speedup':>8s}")
            for k, r in out[name]["table"].items():
                print(f"{k:28s} {r['min_cosine']:8.4f} {r['mean_cosine']:9.5f} {r['speedup_vs_fp32']:7.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print("saved", args.out)


if __name__ == "__main__":
    main()
