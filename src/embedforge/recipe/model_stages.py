"""The stages that make and measure models: ``weak``, ``supervised``, ``merge`` and ``evaluate``.

Training goes through :func:`embedforge.training.train_embedder` (checkpoints with exact resume),
merging through :func:`embedforge.merging.merge_checkpoints`, evaluation through
:func:`embedforge.evaluation.evaluate_retrieval` with the run's embedding store, so a model's
corpus encodings are made once (the miner's included) and reused by every later evaluation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from embedforge.fileio import write_json_atomic, write_jsonl
from embedforge.recipe.context import MODEL_DIR, Context, StageOutput, model_files, seeded_subset, versions
from embedforge.recipe.data_stages import LABELED, SYNTHETIC, labeled_records, training_pairs
from embedforge.recipe.stage_settings import TrainStage

TRAIN_DATA = "train.jsonl"
RESULTS = "results.json"


# ---------------------------------------------------------------------------------------- training
def _train(
    ctx: Context, stage: str, settings: TrainStage, rows: list[dict], start: str, resume: bool
) -> StageOutput:
    """Write the stage's training data and train from ``start`` (``base`` or a stage's model)."""
    from embedforge.recipe.config import RecipeError
    from embedforge.training import EmbedderTrainingConfig, train_embedder
    from embedforge.training.loop import latest_checkpoint

    stage_dir = ctx.dir(stage)
    data = stage_dir / TRAIN_DATA
    if len(rows) < settings.batch_size:
        raise RecipeError(
            f"{len(rows)} training records in {data}, fewer than batch_size {settings.batch_size}: lower "
            "batch_size or give the stage more data"
        )
    write_jsonl(data, rows)
    model_dir = stage_dir / MODEL_DIR
    spec = ctx.model_spec(start)
    steps = settings.max_steps or max(1, len(rows) // settings.batch_size)
    resume_from = latest_checkpoint(model_dir) if resume else None
    cfg = EmbedderTrainingConfig(
        model=spec.model,
        revision=spec.revision,
        allow_pickle=spec.allow_pickle,
        trust_remote_code=spec.trust_remote_code,
        data=str(data),
        output_dir=str(model_dir),
        max_steps=steps,
        batch_size=settings.batch_size,
        seed=ctx.recipe.seed_of(stage),
        num_negatives=getattr(settings, "num_negatives", 0),
        device=spec.device,
        threads=spec.threads,
        show_progress=ctx.show_progress,
        resume=resume_from is not None,
        **settings.trainer_settings(),
    )
    if resume_from is not None:
        ctx.log(f"  {stage}: resuming from {resume_from.name}")
    ctx.forget(stage)
    result = train_embedder(cfg)
    files = model_files(model_dir)
    return StageOutput(
        files,
        {
            "start": start,
            "records": len(rows),
            "steps": result.steps,
            "batch_size": settings.batch_size,
            "final_loss": result.losses[-1] if result.losses else None,
            "resumed_from": result.resumed_from,
            "loss": settings.loss.value,
        },
    )


def _train_inputs(
    ctx: Context, stage: str, settings: TrainStage, data: dict[str, Any], start: str
) -> dict[str, Any]:
    return {
        "start": ctx.model_identity(start),
        "data": data,
        "settings": settings.model_dump(mode="json", exclude={"enabled"}),
        "seed": ctx.recipe.seed_of(stage),
        "use_instructions": ctx.use_instructions,
        "versions": versions(),
    }


def training_resumable(stage_dir: Path) -> bool:
    from embedforge.training.loop import latest_checkpoint

    return latest_checkpoint(stage_dir / MODEL_DIR) is not None


# ---------------------------------------------------------------------------------------- weak
def weak_inputs(ctx: Context) -> dict[str, Any]:
    pairs = ctx.synthetic_pairs()
    assert pairs is not None  # the recipe requires synthesize for weak
    return _train_inputs(
        ctx, "weak", ctx.recipe.stages.weak, {"pairs": ctx.upstream(pairs[0]).outputs_hash}, "base"
    )


def run_weak(ctx: Context, stage_dir: Path, resume: bool) -> StageOutput:
    return _train(ctx, "weak", ctx.recipe.stages.weak, training_pairs(ctx), "base", resume)


# ---------------------------------------------------------------------------------------- supervised
def supervised_inputs(ctx: Context) -> dict[str, Any]:
    s = ctx.recipe.stages.supervised
    d = ctx.recipe.data
    data: dict[str, Any]
    if ctx.on("mine"):
        data = {"mined": ctx.upstream("mine").outputs_hash}
    else:
        data = {
            "labeled": ctx.beir_hash(d.labeled, d.labeled_split, "labelled data", "supervised"),
            "instruction": ctx.labeled_instruction(),
        }
        pairs = ctx.synthetic_pairs()
        if s.synthetic and pairs is not None:
            data["pairs"] = ctx.upstream(pairs[0]).outputs_hash
    return _train_inputs(ctx, "supervised", s, data, ctx.start_model())


def run_supervised(ctx: Context, stage_dir: Path, resume: bool) -> StageOutput:
    from embedforge.fileio import iter_jsonl

    s = ctx.recipe.stages.supervised
    if ctx.on("mine"):
        mine_dir = ctx.dir("mine")
        rows = list(iter_jsonl(mine_dir / LABELED))
        if s.synthetic and (mine_dir / SYNTHETIC).is_file():
            rows += list(iter_jsonl(mine_dir / SYNTHETIC))
    else:
        rows = labeled_records(ctx)[0] + (training_pairs(ctx) if s.synthetic else [])
    out = _train(ctx, "supervised", s, rows, ctx.start_model(), resume)
    model_dir = stage_dir / MODEL_DIR
    for ckpt in sorted((model_dir / "checkpoints").glob("step-*")):  # the merge stage reads them
        out.files += [f for f in model_files(ckpt)]
    return out


# ---------------------------------------------------------------------------------------- merge
def merge_inputs(ctx: Context) -> dict[str, Any]:
    return {
        "supervised": ctx.upstream("supervised").outputs_hash,
        "settings": ctx.recipe.stages.merge.model_dump(mode="json", exclude={"enabled"}),
        "versions": versions(),
    }


def merge_parents(ctx: Context) -> list[Path]:
    """The final supervised model first (its side files are the merge's), then its latest checkpoints."""
    from embedforge.recipe.config import RecipeError

    n = ctx.recipe.stages.merge.checkpoints
    final = ctx.model_path("supervised")
    ckpts = sorted((final / "checkpoints").glob("step-*"), reverse=True)[: n - 1]
    if len(ckpts) < n - 1:
        raise RecipeError(
            f"merging {n} models needs {n - 1} checkpoints in {final / 'checkpoints'}, found {len(ckpts)}"
        )
    return [final, *ckpts]


def run_merge(ctx: Context, stage_dir: Path, resume: bool) -> StageOutput:
    from embedforge.merging import merge_checkpoints

    s = ctx.recipe.stages.merge
    parents = merge_parents(ctx)
    ctx.forget("merge")
    result = merge_checkpoints(
        parents, stage_dir / MODEL_DIR, method=s.method.value, t=s.t, show_progress=ctx.show_progress
    )
    root = ctx.recipe.output_dir
    return StageOutput(
        model_files(stage_dir / MODEL_DIR),
        {
            "method": result.method.value,
            "parents": [str(p.relative_to(root)) for p in parents],
            "t": result.t,
        },
    )


# ---------------------------------------------------------------------------------------- evaluate
def evaluated_models(ctx: Context) -> list[str]:
    return ["base", *(s for s in ("weak", "supervised", "merge") if ctx.on(s))]


def evaluate_inputs(ctx: Context) -> dict[str, Any]:
    d = ctx.recipe.data
    return {
        "models": {m: ctx.model_identity(m) for m in evaluated_models(ctx)},
        "data": ctx.beir_hash(d.eval, d.eval_split, "evaluation data", "evaluate"),
        "split": d.eval_split,
        "settings": ctx.recipe.stages.evaluate.model_dump(mode="json", exclude={"enabled"}),
        "seed": ctx.recipe.seed_of("evaluate"),
        "versions": versions(),
    }


def eval_data(ctx: Context) -> Any:
    """The evaluation split, cut to ``max_queries`` and ``max_docs`` (judged documents always kept)."""
    from embedforge.evaluation import RetrievalData, load_beir

    s, d = ctx.recipe.stages.evaluate, ctx.recipe.data
    assert d.eval is not None
    full = load_beir(d.eval, d.eval_split)
    qids = full.query_ids[: s.max_queries] if s.max_queries else full.query_ids
    judged = {doc for q in qids for doc in full.qrels[q]}
    rows = seeded_subset(
        len(full.corpus_ids),
        [i for i, x in enumerate(full.corpus_ids) if x in judged],
        s.max_docs,
        ctx.recipe.seed_of("evaluate"),
    )
    if len(qids) == len(full.query_ids) and len(rows) == len(full.corpus_ids):
        return full
    pos = {q: i for i, q in enumerate(full.query_ids)}
    return RetrievalData(
        name=full.name,
        corpus_ids=[full.corpus_ids[i] for i in rows],
        corpus_texts=[full.corpus_texts[i] for i in rows],
        query_ids=list(qids),
        query_texts=[full.query_texts[pos[q]] for q in qids],
        qrels={q: full.qrels[q] for q in qids},
        source=full.source,
    )


def run_evaluate(ctx: Context, stage_dir: Path, resume: bool) -> StageOutput:
    from embedforge.evaluation import DEFAULT_METRICS, evaluate_retrieval

    s = ctx.recipe.stages.evaluate
    data = eval_data(ctx)
    results: dict[str, Any] = {}
    summary: dict[str, Any] = {
        "n_queries": len(data.query_ids),
        "n_documents": len(data.corpus_ids),
        "models": {},
    }
    for name in evaluated_models(ctx):
        ctx.log(f"  evaluate: {name}")
        t0 = time.perf_counter()
        report = evaluate_retrieval(
            ctx.embedder(name),
            data,
            split=ctx.recipe.data.eval_split,
            top_k=s.top_k,
            cache_dir=ctx.recipe.store_dir,
            metrics=tuple(s.metrics) if s.metrics else DEFAULT_METRICS,
            show_progress=ctx.show_progress,
        )
        results[name] = report.to_dict()
        summary["models"][name] = {
            "path": str(ctx.model_path(name)),
            "metrics": report.first_stage.metrics,
            "corpus_cached": report.cache.get("corpus_hit"),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if name != "base":
            ctx.forget(name)  # one trained model in memory at a time
    out = stage_dir / RESULTS
    write_json_atomic(out, results)
    return StageOutput([out], summary)


def read_results(stage_dir: Path) -> dict[str, Any]:
    return json.loads((stage_dir / RESULTS).read_text(encoding="utf-8"))


__all__ = [
    "evaluate_inputs",
    "evaluated_models",
    "merge_inputs",
    "run_evaluate",
    "run_merge",
    "run_supervised",
    "run_weak",
    "supervised_inputs",
    "training_resumable",
    "weak_inputs",
]
