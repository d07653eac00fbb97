"""The training loop shared by the embedder and reranker trainers.

Plain torch: AdamW, linear warmup + cosine decay, gradient clipping, deterministic data order,
checkpoints that resume exactly (weights as safetensors + optimizer, scheduler, RNG and step, the
data position being a function of the step), metrics JSONL, a loss-curve PNG and a progress bar.

Under torchrun, rank 0 writes checkpoints and metrics; the RNG state saved is rank 0's, so a
resumed multi-process run replays dropout exactly only for models without dropout (Qwen3 has
none; single-process resumes are exact for every model).

What "exact" means: a run killed and resumed from its checkpoint produces bit-identical losses and
weights to the uninterrupted run when both run on the same machine with the same torch intra-op
thread count (``TrainingConfig.threads``; the count is stored in the checkpoint and a resume with
another count warns). CPU kernels split their sums by thread, so another thread count changes the
last bits of every step (about 1e-6 relative), not the course of training.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from embedforge.training import distributed as D
from embedforge.training.config import Precision, TrainingConfig

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss_curve.png"


@dataclass
class TrainResult:
    """What a training run produced."""

    output_dir: Path
    losses: list[float]  # per step, global (summed over processes), from step 1
    steps: int
    resumed_from: int | None = None
    checkpoints: list[Path] = field(default_factory=list)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the peak over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_indices(n_records: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Record indices of the global batch of ``step`` (0-based).

    Each epoch is a permutation drawn from ``seed + epoch``; the incomplete last batch of an
    epoch is dropped. The batch depends on the step only, so a resumed run sees the same data.
    """
    per_epoch = n_records // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {n_records} training records")
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n_records, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[pos * batch_size : (pos + 1) * batch_size].tolist()


def local_slice(items: Sequence[int], info: D.DistInfo) -> list[int]:
    """This process's equal share of a global batch."""
    if len(items) % info.world_size:
        raise ValueError(
            f"batch_size {len(items)} must be divisible by the number of processes ({info.world_size})"
        )
    n = len(items) // info.world_size
    return list(items[info.rank * n : (info.rank + 1) * n])


def autocast(cfg: TrainingConfig, device: torch.device) -> AbstractContextManager:
    if cfg.precision is Precision.BF16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


# ---------------------------------------------------------------- checkpoints
@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (``None``: leave torch's setting), then restore."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (a partial one is never named ``step-*``)."""
    root = Path(output_dir) / CHECKPOINTS
    done = (
        sorted(p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).exists())
        if root.is_dir()
        else []
    )
    return done[-1] if done else None


def save_checkpoint(
    output_dir: Path,
    step: int,
    save_model: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    losses: list[float],
    keep: int,
) -> Path:
    """Write ``checkpoints/step-XXXXXXX`` atomically (a temp dir renamed when complete)."""
    root = output_dir / CHECKPOINTS
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(tmp)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "losses": list(losses),
        "threads": torch.get_num_threads(),
    }
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- metrics
class MetricsLog:
    """Append-only JSONL of per-step metrics; on resume, lines after the resumed step are dropped."""

    def __init__(self, path: Path, *, resume_step: int | None, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if resume_step is not None and path.exists():
            kept = [
                ln
                for ln in path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= resume_step
            ]
        path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, title: str = "training loss") -> Path:
    """Plot the ``loss`` column of a metrics JSONL against ``step`` (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in Path(metrics_path).read_text().splitlines() if ln.strip()]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)


# ---------------------------------------------------------------- the loop
def run_loop(
    cfg: TrainingConfig,
    *,
    info: D.DistInfo,
    device: torch.device,
    params: list[torch.nn.Parameter],
    n_records: int,
    step_fn: Callable[[list[int]], float],
    save_model: Callable[[Path], None],
    resume_from: Path | None,
    title: str,
) -> TrainResult:
    """Run ``cfg.max_steps`` steps. ``step_fn(local_indices)`` computes the loss over this
    process's share of the batch and accumulates gradients into ``params``; it returns the local
    loss (whose sum over processes is the global loss)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, cfg.max_steps)
    start, losses = 0, []
    if resume_from is not None:
        state = load_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start, losses = int(state["step"]), list(state["losses"])
        saved_threads = state.get("threads")
        if saved_threads is not None and saved_threads != torch.get_num_threads():
            warnings.warn(
                f"resuming with {torch.get_num_threads()} torch threads from a checkpoint written with "
                f"{saved_threads}: the result will differ from an uninterrupted run in the last bits; set "
                f"threads: {saved_threads} in the config for a bit-identical resume",
                stacklevel=2,
            )
    metrics = MetricsLog(out / METRICS_FILE, resume_step=start if resume_from else None, enabled=info.is_main)
    if info.is_main:
        (out / "training_config.json").write_text(cfg.model_dump_json(indent=2))
    checkpoints: list[Path] = []
    bar = tqdm(
        total=cfg.max_steps, initial=start, desc=title, disable=not (cfg.show_progress and info.is_main)
    )
    t0 = time.perf_counter()
    for step in range(start, cfg.max_steps):
        optimizer.zero_grad(set_to_none=True)
        local = local_slice(batch_indices(n_records, cfg.batch_size, step, cfg.seed), info)
        loss = D.sum_over_ranks(step_fn(local))
        D.all_reduce_grads(params)
        grad_norm = None
        if cfg.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        losses.append(loss)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            metrics.write(
                {
                    "step": done,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "elapsed_s": round(time.perf_counter() - t0, 3),
                }
            )
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.max_steps:
            if info.is_main:
                checkpoints.append(
                    save_checkpoint(out, done, save_model, optimizer, scheduler, losses, cfg.keep_checkpoints)
                )
            D.barrier()
    bar.close()
    if info.is_main:
        save_model(out)
        plot_loss_curve(out / METRICS_FILE, out / CURVE_FILE, title)
    D.barrier()
    return TrainResult(out, losses, cfg.max_steps, start if resume_from else None, checkpoints)
