"""Where ONNX Runtime spends its time on three all-MiniLM-L6-v2 graphs: ours exported through SDPA,
ours exported with eager attention (what ``embedforge export`` writes for encoders now), and
sentence-transformers' own graph. Same 128 SciFact documents, batches of 32, ORT's profiler,
kernel time summed per op type.

    python benchmarks/ort_attention_profile.py --st-onnx /work/st-onnx/minilm \\
        --out benchmarks/results/ort_attention_profile.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backends import minilm_dir, scifact_texts  # noqa: E402


def profile(graph: Path, texts: list[str], tok, threads: int) -> dict[str, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "embedforge-ort-profile")
    sess = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    for a in range(0, len(texts), 32):
        enc = tok(texts[a : a + 32], padding=True, truncation=True, max_length=256, return_tensors="np")
        sess.run(None, {k: v.astype(np.int64) for k, v in enc.items() if k in names})
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000  # ms
    ranked = dict(sorted(per_op.items(), key=lambda kv: -kv[1]))
    return {"total_ms": round(sum(ranked.values())), **{k: round(v) for k, v in ranked.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--st-onnx", type=Path, required=True, help="sentence-transformers' ONNX export dir")
    p.add_argument("--docs", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from transformers import AutoTokenizer

    import embedforge.runtime.onnx as onnx_mod
    from embedforge import Embedder
    from embedforge.runtime.onnx import export_graph

    texts = scifact_texts(0, args.docs)
    tok = AutoTokenizer.from_pretrained(str(args.st_onnx))
    emb = Embedder.from_pretrained(str(minilm_dir()), device="cpu", dtype="float32")
    result: dict = {"docs": len(texts), "threads": args.threads, "batch": 32}
    with tempfile.TemporaryDirectory() as tmp:
        sdpa, eager = Path(tmp) / "sdpa", Path(tmp) / "eager"
        export_graph(emb.model, eager, kind="embedder", pooling=emb.pooling, causal=False)
        # the SDPA graph, as encoders were exported before: the eager switch turned off for one export
        saved = onnx_mod._eager_attention
        onnx_mod._eager_attention = lambda module: contextlib.nullcontext()  # type: ignore[assignment]
        try:
            export_graph(emb.model, sdpa, kind="embedder", pooling=emb.pooling, causal=False)
        finally:
            onnx_mod._eager_attention = saved
        for name, graph in (
            ("ours, SDPA export", sdpa / "model.onnx"),
            ("ours, eager export", eager / "model.onnx"),
            ("sentence-transformers", args.st_onnx / "onnx" / "model.onnx"),
        ):
            result[name] = profile(graph, texts, tok, args.threads)
            print(name, result[name], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
