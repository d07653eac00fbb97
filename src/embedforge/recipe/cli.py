"""``embedforge recipe run RECIPE.yaml [--resume | --restart] [--no-progress]`` and ``recipe plan``.

embedforge recipe run benchmarks/recipe_scifact_minilm.yaml
embedforge recipe run recipe.yaml --resume       # continue an interrupted stage
embedforge recipe plan recipe.yaml               # what a run would do, without running it
"""

from __future__ import annotations

import argparse
import sys

from embedforge.spec import add_progress_argument


def _cmd_run(args: argparse.Namespace) -> int:
    from embedforge.recipe.config import RecipeError, load_recipe
    from embedforge.recipe.runner import run_recipe

    if args.resume and args.restart:
        print("embedforge recipe: error: --resume and --restart exclude each other", file=sys.stderr)
        return 2
    try:
        recipe = load_recipe(args.recipe)
        result = run_recipe(
            recipe, resume=args.resume, restart=args.restart, show_progress=not args.no_progress
        )
    except RecipeError as e:
        print(f"embedforge recipe: error: {e}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for action in result.actions().values():
        counts[action] = counts.get(action, 0) + 1
    print(
        f"recipe done: {', '.join(f'{n} {a}' for a, n in counts.items())}; report in {result.report} and "
        f"{result.report.with_suffix('.md') if result.report else ''}",
        file=sys.stderr,
    )
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from embedforge.recipe.config import RecipeError, load_recipe
    from embedforge.recipe.plan import plan_recipe

    try:
        for line in plan_recipe(load_recipe(args.recipe)):
            print(line)
    except RecipeError as e:
        print(f"embedforge recipe: error: {e}", file=sys.stderr)
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``recipe`` command group to the ``embedforge`` parser."""
    recipe = subparsers.add_parser(
        "recipe", help="run the whole training recipe from one YAML file (synthesize ... evaluate)"
    )
    sub = recipe.add_subparsers(dest="recipe_command", required=True, metavar="{run,plan}")
    p = sub.add_parser("run", help="run every stage that is on; skip the ones whose outputs are current")
    p.add_argument("recipe", help="the recipe YAML file")
    p.add_argument("--resume", action="store_true", help="continue an interrupted or failed stage")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start an interrupted or failed stage over (its partial work is discarded)",
    )
    add_progress_argument(p)
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("plan", help="validate a recipe and say which stages a run would skip or run")
    p.add_argument("recipe", help="the recipe YAML file")
    p.set_defaults(func=_cmd_plan)
