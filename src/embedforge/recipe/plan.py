"""What a run of a recipe would do, computed without running anything (``embedforge recipe plan``)."""

from __future__ import annotations

from embedforge.recipe.config import STAGES, Recipe, RecipeError
from embedforge.recipe.context import Context
from embedforge.recipe.runner import IMPLS, _decide
from embedforge.recipe.state import StageRecord, digest


def plan_recipe(recipe: Recipe, *, resume: bool = False) -> list[str]:
    """One line per stage: off, skip (current), run (why) or resume."""
    ctx = Context(recipe, show_progress=False, log=lambda _: None)
    lines = []
    reruns = False
    for name in STAGES:
        if not recipe.stages.on(name):
            lines.append(f"{name}: off")
            continue
        if reruns:  # its inputs include an output not made yet
            lines.append(f"{name}: run unless the stages before it write what they wrote last time")
            continue
        stage_dir = ctx.dir(name)
        inputs = IMPLS[name].inputs(ctx)
        prev = StageRecord.read(stage_dir)
        try:
            what, why = _decide(name, prev, inputs, digest(inputs), stage_dir, resume, False)
        except RecipeError as e:
            what, why = "blocked", str(e)
        if what == "skip" and prev is not None:
            ctx.records[name] = prev
            lines.append(f"{name}: skip ({why})")
        else:
            reruns = True
            lines.append(f"{name}: {'run' if what == 'fresh' else what} ({why})")
    return lines


__all__ = ["plan_recipe"]
