"""The run's report: ``report.json``, ``report.md`` (a table of stage, model, nDCG@10, Recall@100,
time) and two PNG plots: the loss curve of each training stage and nDCG@10 per stage's model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.fileio import atomic_write, write_json_atomic
from embedforge.recipe.config import STAGES
from embedforge.recipe.context import MODEL_DIR, Context
from embedforge.training.loop import METRICS_FILE

if TYPE_CHECKING:
    from embedforge.recipe.runner import RunResult

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
LOSS_PNG = "loss_curves.png"
NDCG_PNG = "ndcg_per_stage.png"
TRAINING = ("weak", "supervised")


def _metrics(ctx: Context) -> dict[str, dict[str, Any]]:
    """Each evaluated model's summary (from the evaluate stage of this run or an earlier one)."""
    rec = ctx.records.get("evaluate")
    return dict(rec.summary.get("models", {})) if rec is not None else {}


def _losses(ctx: Context, stage: str) -> list[tuple[int, float]]:
    path = ctx.dir(stage) / MODEL_DIR / METRICS_FILE
    if not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [(int(r["step"]), float(r["loss"])) for r in rows]


def report_dict(ctx: Context, result: RunResult) -> dict[str, Any]:
    metrics = _metrics(ctx)
    stages = []
    for s in result.stages:
        rec = s.record
        stages.append(
            {
                "stage": s.stage,
                "action": s.action,
                "why": s.why,
                "state": rec.state if rec else None,
                "seconds": rec.seconds if rec else None,
                "cpu_seconds": rec.cpu_seconds if rec else None,
                "inputs_hash": rec.inputs_hash if rec else None,
                "outputs_hash": rec.outputs_hash if rec else None,
                "summary": rec.summary if rec else {},
                "model": str(ctx.model_path(s.stage))
                if s.stage in ("weak", "supervised", "merge") and rec
                else None,
                "metrics": metrics.get(s.stage, {}).get("metrics") if s.stage in metrics else None,
            }
        )
    return {
        "recipe": str(ctx.recipe.source) if ctx.recipe.source else None,
        "name": ctx.recipe.name or (ctx.recipe.source.stem if ctx.recipe.source else None),
        "output_dir": str(ctx.recipe.output_dir),
        "seed": ctx.recipe.seed,
        "base_model": ctx.recipe.model.to_dict(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "error": result.error,
        "stages": stages,
        "models": metrics,
        "losses": {st: _losses(ctx, st) for st in TRAINING if ctx.on(st)},
    }


def _fmt(metrics: dict[str, float] | None, key: str) -> str:
    if not metrics or key not in metrics:
        return "—"
    return f"{100 * metrics[key]:.2f}"


def report_markdown(rep: dict[str, Any]) -> str:
    models = rep["models"]
    lines = [
        f"# Recipe run: {rep['name']}",
        "",
        f"Output: `{rep['output_dir']}`; seed {rep['seed']}; base model `{rep['base_model']['model']}`.",
        "",
        "| stage | model | nDCG@10 | Recall@100 | time | this run |",
        "|---|---|---|---|---|---|",
    ]
    if "base" in models:
        m = models["base"].get("metrics")
        lines.append(
            f"| base | `{models['base']['path']}` | {_fmt(m, 'ndcg@10')} | {_fmt(m, 'recall@100')} | — | — |"
        )
    for s in rep["stages"]:
        if s["action"] == "off":
            lines.append(f"| {s['stage']} | — | — | — | — | off |")
            continue
        secs = f"{s['seconds']:.1f}s" if s["seconds"] is not None else "—"
        if s.get("cpu_seconds") is not None:
            secs += f" ({s['cpu_seconds']:.0f}s CPU)"
        model = f"`{s['model']}`" if s["model"] else "—"
        state = s["action"] if s["state"] == "complete" else (s["state"] or "not reached")
        lines.append(
            f"| {s['stage']} | {model} | {_fmt(s['metrics'], 'ndcg@10')} | {_fmt(s['metrics'], 'recall@100')} | {secs} | {state} |"
        )
    if rep.get("error"):
        lines += ["", f"**Failed:** {rep['error']}"]
    lines += [
        "",
        f"Metrics x100 on the evaluation split; time: the stage's wall time when it ran (CPU time of all threads in brackets). Written {rep['written_at']}.",
    ]
    return "\n".join(lines) + "\n"


def _plot_losses(rep: dict[str, Any], path: Path) -> bool:
    curves = {k: v for k, v in rep["losses"].items() if v}
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5), squeeze=False)
    for ax, (stage, rows) in zip(axes[0], curves.items(), strict=True):
        ax.plot([s for s, _ in rows], [v for _, v in rows], lw=1)
        ax.set_title(f"{stage}: training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return True


def _plot_ndcg(rep: dict[str, Any], path: Path) -> bool:
    models = {
        k: v["metrics"]["ndcg@10"] for k, v in rep["models"].items() if "ndcg@10" in (v.get("metrics") or {})
    }
    if not models:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [m for m in ("base", *STAGES) if m in models]
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(order), 3.5))
    bars = ax.bar(order, [100 * models[m] for m in order], color="#4878a8")
    ax.bar_label(bars, fmt="%.2f")
    ax.set_ylabel("nDCG@10 (x100)")
    ax.set_title("nDCG@10 of each stage's model")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return True


def write_report(ctx: Context, result: RunResult) -> Path:
    """Write report.json, report.md and the plots into the output directory; returns report.json."""
    out = ctx.recipe.output_dir
    rep = report_dict(ctx, result)
    rep["plots"] = [
        p.name for p, draw in ((out / LOSS_PNG, _plot_losses), (out / NDCG_PNG, _plot_ndcg)) if draw(rep, p)
    ]
    write_json_atomic(out / REPORT_JSON, rep)
    with atomic_write(out / REPORT_MD, binary=False) as f:
        f.write(report_markdown(rep))
    return out / REPORT_JSON


__all__ = ["report_dict", "report_markdown", "write_report"]
