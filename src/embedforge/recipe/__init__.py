"""The whole Qwen3 recipe as one resumable run: synthesize -> filter -> weak -> mine -> supervised ->
merge -> evaluate, each stage in its own directory, skipped when its outputs are current.

    from embedforge.recipe import load_recipe, run_recipe
    result = run_recipe(load_recipe("recipe.yaml"), resume=True)
"""

from embedforge.recipe.config import STAGES, Recipe, RecipeError, load_recipe, parse_recipe
from embedforge.recipe.runner import RunResult, StageResult, run_recipe

__all__ = [
    "STAGES",
    "Recipe",
    "RecipeError",
    "RunResult",
    "StageResult",
    "load_recipe",
    "parse_recipe",
    "run_recipe",
]
