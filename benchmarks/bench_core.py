"""Throughput benchmark of the core: embedder and reranker against the model-card loops and
sentence-transformers, on one mixed-length workload with random weights in a real Qwen3 shape.

Speed: every method is loaded in ONE process and the timed runs are interleaved (round r runs
every method once, in an order rotated each round), so a machine that drifts (thermal, other load)
moves all methods alike; the best and the median of ``--repeats`` rounds are kept, with ratios.
(Each method in its own process, the earlier way, favoured whichever ran first on this CPU: x1.63
over sentence-transformers that way, x1.0-1.2 interleaved.) Peak memory (max RSS) is measured
separately, each method once in its own subprocess, so that it is its own (``--no-memory`` skips).

    python benchmarks/bench_core.py --n-texts 192 --repeats 3   # 4-layer 0.6B-wide shape, CPU
    python benchmarks/bench_core.py --layers 28 --device cuda --dtype bfloat16   # full 0.6B on a GPU

Results are printed and saved to benchmarks/results/core_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
EMBED_METHODS = ("embedforge", "model_card", "sentence_transformers")
RERANK_METHODS = ("embedforge", "embedforge_no_prefix_reuse", "model_card")


def make_workload(tokenizer, n: int, lo: int, hi: int, seed: int) -> list[str]:
    """``n`` texts of lo..hi tokens cut from real SciFact text (random words without it)."""
    rng = np.random.default_rng(seed)
    corpus = SHARED / "data" / "scifact" / "corpus.jsonl"
    if corpus.exists():
        rows = [json.loads(line) for line in corpus.open()][:2000]
        stream = tokenizer(" ".join(r["text"] for r in rows), add_special_tokens=False)["input_ids"]
    else:
        words = [f"w{i}" for i in range(5000)]
        stream = tokenizer(" ".join(rng.choice(words, 400_000)), add_special_tokens=False)["input_ids"]
    texts = []
    for length in rng.integers(lo, hi + 1, size=n):
        start = int(rng.integers(0, len(stream) - length))
        texts.append(tokenizer.decode(stream[start : start + int(length)]))
    return texts


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _CardEmbedder:
    """The Qwen3-Embedding model-card loop: batches of 16 in input order, left padding."""

    def __init__(self, path, device, dtype, batch_size=16):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
        self.device, self.batch_size = device, batch_size

    def __call__(self, texts):
        import torch.nn.functional as F

        with torch.inference_mode():
            for s in range(0, len(texts), self.batch_size):
                batch = self.tok(
                    texts[s : s + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=8192,
                    return_tensors="pt",
                ).to(self.device)
                h = self.model(**batch).last_hidden_state[:, -1]
                F.normalize(h, p=2, dim=1).float().cpu()


def prepare_embed(method: str, path: str, texts: list[str], device: str, dtype):
    """Load ``method``'s model; return ``(run, padded_tokens)`` where ``run()`` embeds ``texts``."""
    if method == "model_card":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, padding_side="left")
        padded = sum(
            max(len(x) for x in tok(texts[s : s + 16], truncation=True, max_length=8192)["input_ids"])
            * len(texts[s : s + 16])
            for s in range(0, len(texts), 16)
        )
        card = _CardEmbedder(path, device, dtype)
        return (lambda: card(texts)), padded
    if method == "embedforge":
        from embedforge import Embedder
        from embedforge.batching import plan_batches

        emb = Embedder.from_pretrained(path, device=device, dtype=dtype)
        ids = emb.tokenize(texts)
        padded = plan_batches([len(x) for x in ids], emb.batch_tokens).padded_tokens
        return (lambda: emb.encode_documents(texts)), padded
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device=device, model_kwargs={"dtype": dtype})
    st.tokenizer.padding_side = "left"
    # ST sorts by character length and batches 32 at a time: count what it pads
    order = np.argsort([-len(t) for t in texts], kind="stable")
    lens = [len(x) for x in st.tokenizer([texts[i] for i in order])["input_ids"]]
    padded = sum(max(lens[s : s + 32]) * len(lens[s : s + 32]) for s in range(0, len(lens), 32))
    return (lambda: st.encode(texts, batch_size=32)), padded


def timed(run) -> tuple[float, float]:
    """Wall and CPU seconds of one ``run()``."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    run()
    return time.perf_counter() - t0, cpu_seconds() - c0


def prepare_rerank(method: str, path: str, query: str, docs: list[str], device: str, dtype):
    """Load ``method``'s reranker; return ``run()`` that scores ``query`` against ``docs``."""
    pairs = [(query, d) for d in docs]
    if method == "model_card":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from embedforge.prompts import RERANK_PREFIX, RERANK_SUFFIX, format_rerank_pair

        tok = AutoTokenizer.from_pretrained(path, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        pre = tok.encode(RERANK_PREFIX, add_special_tokens=False)
        suf = tok.encode(RERANK_SUFFIX, add_special_tokens=False)
        yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")

        def run():
            with torch.inference_mode():
                for s in range(0, len(pairs), 16):
                    texts = [format_rerank_pair(q, d) for q, d in pairs[s : s + 16]]
                    enc = tok(
                        texts,
                        padding=False,
                        truncation="longest_first",
                        return_attention_mask=False,
                        max_length=8192 - len(pre) - len(suf),
                    )
                    enc["input_ids"] = [pre + x + suf for x in enc["input_ids"]]
                    enc = tok.pad(enc, padding=True, return_tensors="pt").to(device)
                    logits = model(**enc).logits[:, -1, :]
                    torch.softmax(torch.stack([logits[:, no], logits[:, yes]], 1).float(), 1)[:, 1].cpu()

        return run
    from embedforge import Reranker

    rr = Reranker.from_pretrained(path, device=device, dtype=dtype, prefix_reuse=method == "embedforge")
    return lambda: rr.score(query, docs)


def child(args) -> None:
    """Load one method in this process and run it once: its peak RSS is its own."""
    spec = json.loads(Path(args.child).read_text())
    dtype = getattr(torch, spec["dtype"])
    torch.manual_seed(0)
    if spec["kind"] == "embed":
        run, _ = prepare_embed(spec["method"], spec["path"], spec["texts"], spec["device"], dtype)
    else:
        run = prepare_rerank(spec["method"], spec["path"], spec["query"], spec["docs"], spec["device"], dtype)
    run()
    out = {"peak_rss_mib": peak_rss_mib()}
    if spec["device"].startswith("cuda"):
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out))


def peak_rss_mib() -> float:
    """This process's own peak RSS. ``VmHWM`` belongs to the process's current address space; Linux
    carries ``ru_maxrss`` over from the parent through fork and exec, so a child spawned by a parent
    that holds models would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleave(runs: dict, repeats: int) -> dict[str, dict]:
    """Time every ``runs[name]()`` ``repeats`` times, round-robin, the order rotated each round."""
    names = list(runs)
    for name in names:  # warm-up: first-call allocations and lazy inits are not timed
        runs[name]()
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(runs[name]))
    out = {}
    for name, ts in times.items():
        walls = sorted(t[0] for t in ts)
        best = min(ts, key=lambda t: t[0])
        out[name] = {
            "seconds": best[0],
            "cpu_seconds": best[1],
            "median_seconds": float(np.median(walls)),
            "all_seconds": [t[0] for t in ts],
        }
    return out


def spawn(spec: dict, tmp: Path) -> dict:
    f = tmp / "spec.json"
    f.write_text(json.dumps(spec))
    res = subprocess.run(
        [sys.executable, __file__, "--child", str(f)], capture_output=True, text=True, check=False
    )
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{spec['kind']}/{spec['method']} failed:\n{res.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (0.6B has 28; default 4 on CPU)")
    ap.add_argument("--n-texts", type=int, default=256)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--n-docs", type=int, default=50, help="documents for the reranker query")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="default float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; best and median kept")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-method peak-RSS subprocesses")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from transformers import AutoTokenizer

    from embedforge.testing import QWEN3_0_6B, Qwen3Shape, make_random_qwen3

    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    shape = Qwen3Shape(**{**QWEN3_0_6B.__dict__, "num_hidden_layers": args.layers})
    tok_dir = SHARED / "models" / "qwen3-tokenizer"
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        emb_dir = make_random_qwen3(
            tmp / "emb", tok_dir, shape=shape, seed=0, append_eos=True, sentence_transformers=True
        )
        rr_dir = make_random_qwen3(tmp / "rr", tok_dir, shape=shape, seed=1)
        tok = AutoTokenizer.from_pretrained(str(emb_dir))
        texts = make_workload(tok, args.n_texts, args.min_len, args.max_len, args.seed)
        real_tokens = sum(len(x) + 1 for x in tok(texts, add_special_tokens=False)["input_ids"])
        docs = make_workload(tok, args.n_docs, 32, 256, args.seed + 1)
        query = "What role does the immune system play in the progression of cancer after treatment?"
        results: dict = {
            "shape": shape.describe(),
            "device": args.device,
            "dtype": dtype,
            "torch_threads": torch.get_num_threads(),
            "workload": {
                "n_texts": args.n_texts,
                "lengths": [args.min_len, args.max_len],
                "seed": args.seed,
                "real_tokens": real_tokens,
                "rerank_docs": args.n_docs,
            },
            "embed": {},
            "rerank": {},
        }
        # speed: all methods in this process, interleaved
        embed_runs, padded = {}, {}
        for method in EMBED_METHODS:
            embed_runs[method], padded[method] = prepare_embed(
                method, str(emb_dir), texts, args.device, dtype
            )
        for method, r in interleave(embed_runs, args.repeats).items():
            r["tokens_per_s"] = real_tokens / r["seconds"]
            r["tokens_per_s_median"] = real_tokens / r["median_seconds"]
            r["tokens_per_cpu_s"] = real_tokens / r["cpu_seconds"]
            r["padding_overhead"] = 1 - real_tokens / padded[method]
            results["embed"][method] = r
            print(
                f"embed  {method:28s} {r['tokens_per_s']:9.0f} tok/s (median {r['tokens_per_s_median']:.0f})  "
                f"{r['tokens_per_cpu_s']:9.0f} tok/cpu-s  padding {r['padding_overhead']:.1%}",
                flush=True,
            )
        del embed_runs
        rerank_runs = {
            method: prepare_rerank(method, str(rr_dir), query, docs, args.device, dtype)
            for method in RERANK_METHODS
        }
        for method, r in interleave(rerank_runs, args.repeats).items():
            r["pairs_per_s"] = args.n_docs / r["seconds"]
            r["pairs_per_s_median"] = args.n_docs / r["median_seconds"]
            r["pairs_per_cpu_s"] = args.n_docs / r["cpu_seconds"]
            results["rerank"][method] = r
            print(
                f"rerank {method:28s} {r['pairs_per_s']:9.1f} pairs/s (median {r['pairs_per_s_median']:.1f})  "
                f"{r['pairs_per_cpu_s']:7.2f} pairs/cpu-s",
                flush=True,
            )
        del rerank_runs
        # memory: each method once in its own process
        if not args.no_memory:
            common = {"device": args.device, "dtype": dtype}
            for method in EMBED_METHODS:
                spec = {"kind": "embed", "method": method, "path": str(emb_dir), "texts": texts, **common}
                results["embed"][method].update(spawn(spec, tmp))
            for method in RERANK_METHODS:
                spec = {"kind": "rerank", "method": method, "path": str(rr_dir), "query": query, "docs": docs}
                results["rerank"][method].update(spawn({**spec, **common}, tmp))
            for kind in ("embed", "rerank"):
                for method, r in results[kind].items():
                    print(f"{kind:6s} {method:28s} peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    e, rr = results["embed"], results["rerank"]
    # The machine may be shared: CPU-seconds of the timed part are the fairer basis, wall time is kept too.
    results["method"] = (
        "one process, interleaved rounds (best of --repeats); peak RSS from one run per method in its own process"
    )
    results["ratios_by_cpu_time"] = {
        "embed_vs_model_card": e["embedforge"]["tokens_per_cpu_s"] / e["model_card"]["tokens_per_cpu_s"],
        "embed_vs_sentence_transformers": e["embedforge"]["tokens_per_cpu_s"]
        / e["sentence_transformers"]["tokens_per_cpu_s"],
        "rerank_vs_model_card": rr["embedforge"]["pairs_per_cpu_s"] / rr["model_card"]["pairs_per_cpu_s"],
        "rerank_prefix_reuse_gain": rr["embedforge"]["pairs_per_cpu_s"]
        / rr["embedforge_no_prefix_reuse"]["pairs_per_cpu_s"],
    }
    results["ratios"] = {
        "embed_vs_model_card": e["embedforge"]["tokens_per_s"] / e["model_card"]["tokens_per_s"],
        "embed_vs_sentence_transformers": e["embedforge"]["tokens_per_s"]
        / e["sentence_transformers"]["tokens_per_s"],
        "rerank_vs_model_card": rr["embedforge"]["pairs_per_s"] / rr["model_card"]["pairs_per_s"],
        "rerank_prefix_reuse_gain": rr["embedforge"]["pairs_per_s"]
        / rr["embedforge_no_prefix_reuse"]["pairs_per_s"],
    }
    results["ratios_median"] = {
        "embed_vs_model_card": e["embedforge"]["tokens_per_s_median"]
        / e["model_card"]["tokens_per_s_median"],
        "embed_vs_sentence_transformers": e["embedforge"]["tokens_per_s_median"]
        / e["sentence_transformers"]["tokens_per_s_median"],
        "rerank_vs_model_card": rr["embedforge"]["pairs_per_s_median"]
        / rr["model_card"]["pairs_per_s_median"],
        "rerank_prefix_reuse_gain": rr["embedforge"]["pairs_per_s_median"]
        / rr["embedforge_no_prefix_reuse"]["pairs_per_s_median"],
    }
    print("wall-time ratios", json.dumps(results["ratios"], indent=2))
    print("cpu-time ratios", json.dumps(results["ratios_by_cpu_time"], indent=2))
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"core_{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
