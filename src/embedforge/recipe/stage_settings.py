"""The settings of each stage of a recipe, in the order the stages run.

A stage runs when it is listed under ``stages:`` and not switched off (``weak: false`` or
``enabled: false``); an unlisted stage is off. The training stages take the fields of
:class:`~embedforge.training.EmbedderTrainingConfig` (minus those the recipe sets itself: model,
data, output_dir, device, threads ...), with their help text, and a loss preset.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, create_model, field_validator, model_validator

from embedforge.recipe.fields import RecipePath, Section, SpecField
from embedforge.synthesis.llm import ResponseFormat
from embedforge.training.config import EmbedderTrainingConfig


class _Stage(Section):
    enabled: bool = Field(True, description="false switches the stage off (ablations)")


class LLMSettings(Section):
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
    response_format: ResponseFormat = Field(
        ResponseFormat.none,
        description="Send each answer's JSON schema for constrained decoding: json_schema (OpenAI, vLLM, "
        "SGLang, llama-server), json_object (llama-cpp-python's server) or none (endpoints only)",
    )
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
        warmup_steps: int

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
        if self.max_steps is not None and self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
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

    @model_validator(mode="after")
    def _fold(self) -> MergeStage:
        if self.t is not None:
            if self.method is not MergeMethodName.slerp:
                raise ValueError("t applies to slerp only")
            if len(self.t) != self.checkpoints - 1 or not all(0.0 <= x <= 1.0 for x in self.t):
                raise ValueError(
                    f"slerp of {self.checkpoints} models takes {self.checkpoints - 1} t values in [0, 1], got {self.t}"
                )
        return self


class EvaluateStage(_Stage):
    """Retrieval metrics of every stage's model on the evaluation split."""

    max_queries: int | None = Field(None, gt=0, description="Evaluate the first N queries; null = all")
    max_docs: int | None = Field(
        None, gt=0, description="Sub-corpus: the judged documents plus a seeded sample up to N; null = all"
    )
    top_k: int = Field(100, gt=0, description="Documents retrieved per query")
    metrics: list[str] | None = Field(None, description="Metrics reported; null = the evaluation default")
    seed: int | None = Field(None, description="Seed of the max_docs sample; null = the recipe's seed")


class Stages(Section):
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


__all__ = [
    "MNRL_TERMS",
    "EvaluateStage",
    "FilterStage",
    "LLMSettings",
    "LossPreset",
    "MergeMethodName",
    "MergeStage",
    "MineStage",
    "Stages",
    "SupervisedStage",
    "SynthesizeStage",
    "TrainStage",
    "WeakStage",
]
