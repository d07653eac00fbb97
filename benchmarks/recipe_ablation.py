"""The ablation rows of the Qwen3 recipe, each a recipe run (embedforge.recipe), over several seeds.

(1) pipeline: base model; supervised only; synthetic only (stage 1); synthetic then supervised;
    plus merging (slerp of supervised checkpoints).
(2) loss, on the supervised-only pipeline: improved InfoNCE with all terms and the mask; without
    the false-negative mask; without the query-query term; without the document-document term;
    sentence-transformers' MultipleNegativesRankingLoss (``loss: mnrl``, the same loss as
    sentence-transformers', checked in tests/recipe/test_loss_presets.py).

Every row is mean +- std over ``--seeds`` (the seed of training: data order and initialisation;
the synthetic pairs, the mining sample and the evaluation sub-corpus stay fixed). Rows that are the
same recipe are one run: the full pipeline gives base, synthetic only, synthetic then supervised and
plus merging from one run per seed (its weak, supervised and merge models); "supervised only" is
also the loss table's first row. All runs share one embedding store, so a model's corpus is encoded
once (the base model's once for every row). A rerun skips every finished stage.

The synthetic pairs are made once: ``--synthetic-store FILE`` reuses a synthesis output (records
JSONL); without it a synthesis-only recipe runs first with the base recipe's LLM settings (or
``--llm URL --llm-model NAME``).

Cost on 2 CPU cores (MiniLM, measured at reduced scale and scaled up): one SciFact corpus encoding
~450 CPU-s (~4 min), one training step at batch 32 with 3 negatives ~28 CPU-s (~10-15 s). Per seed
the full-pipeline recipe takes ~25-30 min, each supervised-only recipe (5 of them) ~10 min, so the
full ablation at 3 seeds takes ~3.5-4.5 h on an idle machine (plus the synthesis, which wants a GPU
LLM endpoint) and ~5 GB of disk under --work.

Full scale (the base recipe's settings):
    PYTHONPATH=src .venv/bin/python benchmarks/recipe_ablation.py --synthetic-store PAIRS.jsonl
Reduced scale, without synthetic pairs (the README's tables; 82 min on 2 busy cores):
    PYTHONPATH=src .venv/bin/python benchmarks/recipe_ablation.py --without-synthetic --seeds 0 1 2 \
        --max-steps 10 --batch-size 32 --eval-docs 1000 --mine-docs 1000
Every model of the tables is also scored on data no stage trained on (``--no-second-eval`` skips):
STS-benchmark English test (Spearman) and XQuAD-R ``--xquad-lang`` (nDCG@10).
Writes benchmarks/results/recipe_ablation.json and .md (``--out``); runs under ``--work``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from embedforge.recipe import load_recipe, run_recipe

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"

# pipeline rows: (row, recipe, model of that recipe)
PIPELINE = [
    ("base", "full", "base"),
    ("supervised only", "supervised", "supervised"),
    ("synthetic only", "full", "weak"),
    ("synthetic then supervised", "full", "supervised"),
    ("+ merging (slerp)", "full", "merge"),
]
# loss rows: (row, recipe, settings of the training stage)
LOSSES = [
    ("improved InfoNCE, all terms + mask", "supervised", {}),
    ("without the false-negative mask", "loss-nomask", {"mask_false_negatives": False}),
    ("without the query-query term", "loss-noqq", {"query_query": False}),
    ("without the document-document term", "loss-nodd", {"doc_doc": False}),
    ("sentence-transformers MNRL", "loss-mnrl", {"loss": "mnrl"}),
]
METRICS = ("ndcg@10", "recall@100")
SECOND = ("stsb_spearman", "xquad_ndcg@10")  # the second evaluation, on data not trained on


def base_recipe(path: Path) -> dict[str, Any]:
    """The base recipe with its paths made absolute (the variants are written elsewhere)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    resolved = load_recipe(path)
    raw["model"] = resolved.model.to_dict()
    for key in ("synthesis_corpus", "labeled", "eval"):
        value = getattr(resolved.data, key)
        if value is not None:
            raw.setdefault("data", {})[key] = str(value)
    return raw


def scaled(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The reduced-scale flags applied to every stage they concern."""
    r = copy.deepcopy(raw)
    st = r["stages"]
    if args.max_steps:
        for name in ("weak", "supervised"):
            if name in st:
                st[name]["max_steps"] = args.max_steps
        if "supervised" in st and "merge" in st:  # merge the final model with the mid-run checkpoint
            st["supervised"]["save_every"] = max(1, args.max_steps // 2)
            st["supervised"]["keep_checkpoints"] = max(1, int(st["merge"].get("checkpoints", 2)) - 1)
        if "weak" in st:
            st["weak"]["save_every"] = max(1, args.max_steps // 2)
        for name in ("weak", "supervised"):
            if name in st:
                st[name]["warmup_steps"] = min(int(st[name].get("warmup_steps", 0)), args.max_steps)
    if args.batch_size:
        for name in ("weak", "supervised"):
            if name in st:
                st[name]["batch_size"] = args.batch_size
    if args.eval_docs:
        st.setdefault("evaluate", {})["max_docs"] = args.eval_docs
    if args.eval_queries:
        st.setdefault("evaluate", {})["max_queries"] = args.eval_queries
    if args.mine_docs:
        st.setdefault("mine", {})["max_docs"] = args.mine_docs
    if args.synthetic_docs:
        st["synthesize"]["documents"] = args.synthetic_docs
    for name in ("synthesize", "mine", "evaluate"):  # data selection stays fixed across seeds
        if name in st:
            st[name]["seed"] = 0
    return r


def variants(raw: dict[str, Any], store: Path | None) -> dict[str, dict[str, Any]]:
    """The recipes of one seed, by name. Without a synthetic store (``--without-synthetic``) there
    is no "full" recipe: the supervised-only recipe also merges, and gives the base and merging rows."""
    full = copy.deepcopy(raw)
    if store is not None:
        full["stages"]["synthesize"] = {
            "records": str(store),
            **{k: v for k, v in raw["stages"]["synthesize"].items() if k in ("documents", "per_doc", "seed")},
        }
    sup = copy.deepcopy(full)
    for name in ("synthesize", "filter", "weak", "merge"):
        sup["stages"][name] = {"enabled": False}
    sup["stages"]["supervised"]["synthetic"] = False
    out = {"supervised": sup}
    for _, name, settings in LOSSES:
        if name != "supervised":
            v = copy.deepcopy(sup)
            v["stages"]["supervised"].update(settings)
            out[name] = v
    if store is not None:
        out["full"] = full
    else:
        sup["stages"]["merge"] = copy.deepcopy(raw["stages"]["merge"])
    return out


def pipeline_rows(with_synthetic: bool) -> list[tuple[str, str | None, str]]:
    """(row, recipe or None when not measured, model) of the pipeline table."""
    if with_synthetic:
        return PIPELINE
    where = {"base": "supervised", "supervised only": "supervised", "+ merging (slerp)": "supervised"}
    return [(row, where.get(row), model) for row, _, model in PIPELINE]


# ---------------------------------------------------------------------------- second evaluation
def second_evaluation(models: dict[str, str], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """STS-benchmark (English test, Spearman of cosine) and XQuAD-R (``--xquad-lang``, nDCG@10) of
    each model path: data no stage trained on. Embeddings are cached in the ablation's store."""
    from embedforge import Embedder
    from embedforge.evaluation import evaluate_retrieval, load_beir
    from embedforge.evaluation.data import load_sts_csv
    from embedforge.evaluation.sts import evaluate_sts

    sts = load_sts_csv(SHARED / "stsb-multi-mt" / "data" / "stsb-en-test.csv", name="stsb-en-test")
    xq = load_beir(SHARED / "xquad-r" / args.xquad_lang, "test", name=f"xquad-r-{args.xquad_lang}")
    cache = args.work / "cache"
    out: dict[str, dict[str, float]] = {}
    for key, path in models.items():
        emb = Embedder.from_pretrained(path, device="cpu", dtype="float32")
        s = evaluate_sts(emb, sts, cache_dir=cache, show_progress=False)
        r = evaluate_retrieval(emb, xq, cache_dir=cache, show_progress=False)
        out[key] = {"stsb_spearman": s.spearman, "xquad_ndcg@10": r.first_stage.metrics["ndcg@10"]}
        print(f"   second evaluation {key}: {out[key]}", flush=True)
    return out


def run_one(raw: dict[str, Any], path: Path, *, show_progress: bool) -> tuple[dict[str, Any], float]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    t0 = time.perf_counter()
    result = run_recipe(load_recipe(path), resume=True, show_progress=show_progress)  # a killed run continues
    assert result.report is not None
    for state in result.recipe.output_dir.glob("*/model/checkpoints/*/trainer_state.pt"):
        state.unlink()  # optimizer states of finished stages (2x the model): not needed once complete
    return json.loads(result.report.read_text()), time.perf_counter() - t0


def synthesize_once(raw: dict[str, Any], args: argparse.Namespace) -> Path:
    """Run the synthesis stage alone (with the LLM of the recipe or of --llm) and return its records."""
    r = copy.deepcopy(raw)
    syn = r["stages"]["synthesize"]
    if args.llm:
        syn["llm"] = {**syn.get("llm", {}), "url": args.llm, "model": args.llm_model}
    r["stages"] = {"synthesize": syn}
    r["output_dir"] = str(args.work / "synthesis")
    r["cache_dir"] = str(args.work / "cache")
    run_one(r, args.work / "recipes" / "synthesis.yaml", show_progress=not args.no_progress)
    return args.work / "synthesis" / "synthesize" / "records.jsonl"


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def table(title: str, rows: list[tuple[str, dict[str, Any]]], xquad: str) -> list[str]:
    head = f"| row | SciFact nDCG@10 | SciFact Recall@100 | STS-b en Spearman | XQuAD-R {xquad} nDCG@10 |"
    lines = [f"### {title}", "", head, "|---|---|---|---|---|"]
    for name, r in rows:
        if r.get("not_measured"):
            lines.append(f"| {name} | {r['not_measured']} |  |  |  |")
            continue
        cells = [
            f"{100 * r[m]['mean']:.2f} ± {100 * r[m]['std']:.2f}" if m in r else "—" for m in METRICS + SECOND
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=REPO / "benchmarks" / "recipe_scifact_minilm.yaml")
    ap.add_argument("--synthetic-store", type=Path, default=None, help="synthesis records JSONL to reuse")
    ap.add_argument(
        "--llm", default=None, help="LLM base URL for the one synthesis run (default: the recipe's)"
    )
    ap.add_argument("--llm-model", default=None, help="model name the --llm endpoint serves")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (>= 3 for mean ± std)"
    )
    ap.add_argument(
        "--max-steps", type=int, default=None, help="steps of each training stage (default: the recipe's)"
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="batch of each training stage (default: the recipe's)"
    )
    ap.add_argument(
        "--eval-docs", type=int, default=None, help="evaluation sub-corpus size (judged docs kept)"
    )
    ap.add_argument("--eval-queries", type=int, default=None, help="evaluate the first N test queries")
    ap.add_argument("--mine-docs", type=int, default=None, help="mine hard negatives from N documents")
    ap.add_argument("--synthetic-docs", type=int, default=None, help="synthetic pairs of N documents")
    ap.add_argument("--rows", nargs="+", choices=["pipeline", "loss"], default=["pipeline", "loss"])
    ap.add_argument(
        "--without-synthetic",
        action="store_true",
        help="no synthetic stage: the synthetic rows are reported as not measured",
    )
    ap.add_argument("--xquad-lang", default="de", help="XQuAD-R language of the second evaluation")
    ap.add_argument("--no-second-eval", action="store_true", help="skip STS-benchmark and XQuAD-R")
    ap.add_argument("--work", type=Path, default=Path("/tmp/embedforge-recipe-ablation"))
    ap.add_argument("--out", type=Path, default=RESULTS / "recipe_ablation.json")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    t_all = time.perf_counter()

    raw = scaled(base_recipe(args.recipe), args)
    raw["cache_dir"] = str(args.work / "cache")  # one embedding store for every run
    if args.without_synthetic:
        store = None
        for name in ("synthesize", "filter", "weak"):
            raw["stages"][name] = {"enabled": False}
        raw["stages"]["supervised"]["synthetic"] = False
    else:
        store = args.synthetic_store.absolute() if args.synthetic_store else synthesize_once(raw, args)
    prows = pipeline_rows(store is not None)
    names = {r for _, r, _ in prows if r} if "pipeline" in args.rows else set()
    if "loss" in args.rows:
        names |= {r for _, r, _ in LOSSES}
    reports: dict[int, dict[str, dict[str, Any]]] = {}
    timings: dict[str, list[float]] = {}
    for seed in args.seeds:
        for name, recipe in variants(raw, store).items():
            if name not in names:
                continue
            recipe = {**recipe, "seed": seed, "name": f"{name}-seed{seed}"}
            recipe["output_dir"] = str(args.work / f"seed{seed}" / name)
            print(f"== seed {seed}: {name}", flush=True)
            rep, secs = run_one(
                recipe, args.work / "recipes" / f"{name}-seed{seed}.yaml", show_progress=not args.no_progress
            )
            reports.setdefault(seed, {})[name] = rep
            timings.setdefault(name, []).append(round(secs, 1))
            print(
                f"   {secs:.0f}s; nDCG@10 "
                + ", ".join(f"{m} {100 * v['metrics']['ndcg@10']:.2f}" for m, v in rep["models"].items()),
                flush=True,
            )

    second: dict[str, dict[str, float]] = {}
    if not args.no_second_eval:
        wanted = {(r, m) for _, r, m in prows if r} if "pipeline" in args.rows else set()
        if "loss" in args.rows:
            wanted |= {(r, "supervised") for _, r, _ in LOSSES}
        paths = {}
        for s in args.seeds:
            for r, m in sorted(wanted):
                path = reports[s][r]["models"][m]["path"]
                paths[path] = path  # the base model is one path for every seed
        print(f"== second evaluation: {len(paths)} models", flush=True)
        second = second_evaluation(paths, args)

    def row(recipe: str | None, model: str) -> dict[str, Any]:
        if recipe is None:
            return {"not_measured": "not measured: no synthetic pairs (see the README)"}
        out = {}
        for m in METRICS:
            out[m] = summarize([reports[s][recipe]["models"][model]["metrics"][m] for s in args.seeds])
        for m in SECOND if second else ():
            out[m] = summarize([second[reports[s][recipe]["models"][model]["path"]][m] for s in args.seeds])
        out["per_seed_ndcg@10"] = [
            reports[s][recipe]["models"][model]["metrics"]["ndcg@10"] for s in args.seeds
        ]
        return out

    results: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "synthetic_store": str(store) if store else None,
        "recipe_runs_s": timings,
    }
    md = [f"## Recipe ablation ({args.recipe.name}, seeds {args.seeds})", ""]
    if "pipeline" in args.rows:
        results["pipeline"] = {name: row(r, m) for name, r, m in prows}
        md += table("Pipeline", list(results["pipeline"].items()), args.xquad_lang)
    if "loss" in args.rows:
        results["loss"] = {name: row(r, "supervised") for name, r, _ in LOSSES}
        md += table("Loss (supervised only)", list(results["loss"].items()), args.xquad_lang)
    first = reports[args.seeds[0]]
    ev = next(iter(first.values()))["stages"][-1]["summary"]
    results["eval"] = {"n_queries": ev.get("n_queries"), "n_documents": ev.get("n_documents")}
    results["total_s"] = round(time.perf_counter() - t_all, 1)
    scale = ", ".join(
        f"{k} {v}"
        for k, v in (
            ("max_steps", args.max_steps),
            ("batch_size", args.batch_size),
            ("eval_docs", args.eval_docs),
            ("eval_queries", args.eval_queries),
            ("mine_docs", args.mine_docs),
            ("synthetic_docs", args.synthetic_docs),
        )
        if v
    )
    md += [
        f"Evaluation: {ev.get('n_queries')} queries, {ev.get('n_documents')} documents; "
        + (f"reduced scale ({scale}): not comparable to full-scale figures. " if scale else "full scale. ")
        + f"Mean ± std over {len(args.seeds)} seeds, x100. Total {results['total_s']:.0f}s wall on this machine; "
        + "recipe runs (s): "
        + "; ".join(f"{k} {v}" for k, v in timings.items())
        + ".",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
