"""Running a recipe: the stages in order, each skipped when its outputs are current.

For each stage that is on, the runner hashes its inputs and reads its ``stage.json``:

- complete, same inputs, outputs intact: **skipped**;
- absent, or other inputs (a setting or an upstream output changed): **ran** from scratch (the
  stage directory is emptied, except what the stage keeps across changes: the synthesis store);
- interrupted or failed on the same inputs: **resumed** with ``resume=True`` (the synthesis store
  skips finished keys, training continues from its latest checkpoint), or started over with
  ``restart=True``; without either, an interrupted stage that left work behind is an error that
  says so, and one that left nothing starts over.

A stage that fails is marked ``failed`` with its error and the run stops there: earlier stages keep
their outputs and stay current. Errors name the stage (and the file, where one is at fault).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedforge.recipe import data_stages as D
from embedforge.recipe import model_stages as M
from embedforge.recipe.config import STAGES, Action, Recipe, RecipeError
from embedforge.recipe.context import Context, StageOutput
from embedforge.recipe.state import STATE_FILE, StageRecord, changed_keys, digest


@dataclass(frozen=True)
class StageImpl:
    """How the runner drives one stage."""

    inputs: Callable[[Context], dict[str, Any]]
    run: Callable[[Context, Path, bool], StageOutput]
    resumable: Callable[[Path], bool] = lambda _: False  # whether an interrupted run left work to continue
    keep: Callable[[Context], list[str]] = lambda _: []  # files kept when the inputs change


IMPLS: dict[str, StageImpl] = {
    "synthesize": StageImpl(D.synthesize_inputs, D.run_synthesize, D.synthesize_resumable, D.synthesize_keep),
    "filter": StageImpl(D.filter_inputs, D.run_filter),
    "weak": StageImpl(M.weak_inputs, M.run_weak, M.training_resumable),
    "mine": StageImpl(D.mine_inputs, D.run_mine),
    "supervised": StageImpl(M.supervised_inputs, M.run_supervised, M.training_resumable),
    "merge": StageImpl(M.merge_inputs, M.run_merge),
    "evaluate": StageImpl(M.evaluate_inputs, M.run_evaluate),
}


@dataclass
class StageResult:
    """What happened to one stage in this run."""

    stage: str
    action: Action
    record: StageRecord | None = None
    why: str = ""


@dataclass
class RunResult:
    """A run's stages in order; ``report`` is the path of ``report.json`` (written even on failure)."""

    recipe: Recipe
    stages: list[StageResult] = field(default_factory=list)
    report: Path | None = None
    error: str | None = None

    def actions(self) -> dict[str, Action]:
        return {s.stage: s.action for s in self.stages}


def _clear(stage_dir: Path, keep: list[str]) -> None:
    if not stage_dir.exists():
        return
    for p in stage_dir.iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _decide(
    name: str,
    prev: StageRecord | None,
    inputs: dict[str, Any],
    h: str,
    stage_dir: Path,
    resume: bool,
    restart: bool,
) -> tuple[str, str]:
    """("skip" | "fresh" | "resume", why)."""
    if prev is None:
        return "fresh", "first run"
    if prev.inputs_hash != h:
        changed = changed_keys(prev.inputs, inputs)
        return "fresh", "inputs changed: " + (", ".join(changed[:6]) or "(unrecorded)")
    if prev.complete:
        if prev.outputs_intact(stage_dir):
            return "skip", "current"
        return "fresh", "outputs missing or changed on disk"
    if restart:
        return "fresh", "--restart"
    if resume:
        return "resume", f"continuing an {'interrupted' if prev.state == 'running' else 'failed'} run"
    if IMPLS[name].resumable(stage_dir):
        raise RecipeError(
            f"stage {name!r} was {'interrupted' if prev.state == 'running' else 'failed'} in an earlier run and "
            f"left work in {stage_dir}: rerun with --resume to continue it, or --restart to start it over"
        )
    return "fresh", f"earlier run {prev.state}, nothing to continue"


def run_recipe(
    recipe: Recipe,
    *,
    resume: bool = False,
    restart: bool = False,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Run every stage that is on (see the module docstring); writes report.json/.md and plots.

    Raises :class:`RecipeError` (the report is written first) when a stage fails.
    """
    from transformers.utils import logging as hf_logging

    from embedforge.recipe.report import write_report

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    ctx = Context(recipe, show_progress=show_progress, log=say)
    recipe.output_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(recipe)
    on = [s for s in STAGES if recipe.stages.on(s)]
    hf_bars = hf_logging.is_progress_bar_enabled()
    if not show_progress:
        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bars too
    lock = _lock(recipe.output_dir)
    try:
        for name in STAGES:
            if name not in on:
                result.stages.append(StageResult(name, "off"))
                continue
            step = f"[{on.index(name) + 1}/{len(on)}] {name}"
            result.stages.append(_run_stage(ctx, name, step, resume=resume, restart=restart))
    except RecipeError as e:
        result.error = str(e)
        raise
    finally:
        result.report = write_report(ctx, result)
        if hf_bars and not show_progress:
            hf_logging.enable_progress_bar()
        os.close(lock)  # releases the lock (the kernel does so too when a run is killed)
    return result


LOCK_FILE = ".recipe.lock"


def _lock(output_dir: Path) -> int:
    """An exclusive ``flock`` on the output directory: two runs never write the same stages."""
    fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RecipeError(
            f"another recipe run is writing {output_dir} ({output_dir / LOCK_FILE} is locked)"
        ) from None
    return fd


def _run_stage(ctx: Context, name: str, step: str, *, resume: bool, restart: bool) -> StageResult:
    stage_dir = ctx.dir(name)
    try:
        inputs = IMPLS[name].inputs(ctx)
    except (FileNotFoundError, ValueError) as e:
        msg = str(e)
        raise RecipeError(msg if msg.startswith("stage ") else f"stage {name!r}: {msg}") from e
    h = digest(inputs)
    prev = StageRecord.read(stage_dir)
    what, why = _decide(name, prev, inputs, h, stage_dir, resume, restart)
    if what == "skip":
        assert prev is not None
        ctx.records[name] = prev
        ctx.log(f"{step}: skipped ({why})")
        return StageResult(name, "skipped", prev, why)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if what == "fresh":
        _clear(stage_dir, [] if why == "--restart" else IMPLS[name].keep(ctx))
    ctx.log(f"{step}: {'resuming' if what == 'resume' else 'running'} ({why})")
    record = StageRecord(
        stage=name,
        inputs_hash=h,
        state="running",
        inputs=inputs,
        started_at=time.time(),
        runs=(prev.runs + 1) if (what == "resume" and prev is not None) else 1,
    )
    record.write(stage_dir)
    cpu0 = time.process_time()
    try:
        out = IMPLS[name].run(ctx, stage_dir, what == "resume")
    except Exception as e:  # recorded and re-raised with the stage's name; nothing is swallowed
        record.state, record.error = "failed", f"{type(e).__name__}: {e}"
        record.finished_at = time.time()
        record.write(stage_dir)
        raise RecipeError(f"stage {name!r} failed: {e} (state in {stage_dir / STATE_FILE})") from e
    record.finish(stage_dir, out.files, out.summary, time.process_time() - cpu0)
    ctx.records[name] = record
    ctx.log(f"{step}: done in {record.seconds:.1f}s ({record.cpu_seconds:.1f}s CPU)")
    return StageResult(name, "resumed" if what == "resume" else "ran", record, why)


__all__ = ["IMPLS", "RunResult", "StageResult", "run_recipe"]
