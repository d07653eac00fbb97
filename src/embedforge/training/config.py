"""Typed, validated training configurations, read from YAML or JSON files.

Every field carries its help text (``EmbedderTrainingConfig.model_json_schema()`` lists them);
unknown keys are errors, so a misspelt option never goes silently unused.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from embedforge.spec import ModelSpec


class Precision(str, Enum):
    """Compute precision. Weights and optimizer state stay fp32; bf16 runs the forward in autocast."""

    FP32 = "fp32"
    BF16 = "bf16"


class LoraSettings(BaseModel):
    """LoRA adapters (peft) instead of full fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, gt=0, description="Rank of the LoRA update matrices")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (update scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input")
    target_modules: list[str] | str = Field(
        "all-linear",
        description="Module names to adapt, or 'all-linear' for every linear layer but the output head",
    )


class TrainingConfig(BaseModel):
    """Fields shared by the embedder and the reranker trainers."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    model: str = Field(..., description="Model directory (or Hub id) to start from")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of a Hub model id")
    allow_pickle: bool = Field(
        False, description="Allow loading pickle (.bin) weights; safetensors only by default"
    )
    trust_remote_code: bool = Field(
        False, description="Run the checkpoint's own Python code (off by default)"
    )
    data: str = Field(..., description="Training records, JSONL (see embedforge.training.data)")
    output_dir: str = Field(
        ..., description="Where the final model, checkpoints/, metrics.jsonl and loss_curve.png go"
    )
    max_steps: int = Field(..., gt=0, description="Number of optimizer steps")
    batch_size: int = Field(
        ...,
        gt=0,
        description="Global batch: instances (embedder) or pairs (reranker) per step, over all processes",
    )
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate (AdamW)")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps, then cosine decay to 0 at max_steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm to this value; null = no clipping"
    )
    seed: int = Field(0, description="Seed of the weights' random parts, dropout and the data order")
    precision: Precision = Field(Precision.FP32, description="fp32, or bf16 autocast (weights stay fp32)")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory"
    )
    lora: LoraSettings | None = Field(
        None, description="Train LoRA adapters (peft) instead of all weights; null = full fine-tuning"
    )
    max_length: int = Field(
        512,
        gt=8,
        description="Maximum tokens per training input (template included; capped at the model's own); saved models keep the checkpoint's max length",
    )
    instruction: str | None = Field(
        None, description="Instruction for records without one; null = the model's default"
    )
    save_every: int | None = Field(
        None,
        gt=0,
        description="Save a checkpoint every N steps (weights, optimizer, scheduler, RNG, data position); null = final model only",
    )
    keep_checkpoints: int = Field(2, gt=0, description="How many of the latest checkpoints to keep on disk")
    resume: bool = Field(False, description="Continue from the latest checkpoint in output_dir/checkpoints")
    log_every: int = Field(1, gt=0, description="Write a metrics line every N steps")
    device: str | None = Field(
        None, description="Device; null = cuda when available (its local rank under torchrun), else cpu"
    )
    show_progress: bool = Field(True, description="Show a progress bar")
    threads: int | None = Field(
        None,
        gt=0,
        description="torch intra-op CPU threads for the run (set for the run, restored after); null = torch's "
        "default. Float sums depend on it: a resumed run is bit-identical to an uninterrupted one when both "
        "use the same threads on the same machine",
    )

    def model_spec(self) -> ModelSpec:
        """The starting model as a :class:`~embedforge.spec.ModelSpec` (fp32 weights for training)."""
        return ModelSpec(
            model=self.model,
            revision=self.revision,
            device=self.device,
            dtype="float32",
            allow_pickle=self.allow_pickle,
            trust_remote_code=self.trust_remote_code,
        )

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps})")
        return self


class EmbedderTrainingConfig(TrainingConfig):
    """Fine-tune an embedder with the improved InfoNCE loss of Qwen3 Embedding."""

    num_negatives: int = Field(
        7,
        ge=0,
        description="Hard negatives per instance (the first K of each record); each record needs at least K",
    )
    temperature: float = Field(0.01, gt=0, description="InfoNCE temperature tau")
    margin: float = Field(
        0.1, description="False-negative mask margin: terms with s > s(q, d+) + margin are dropped"
    )
    query_query: bool = Field(True, description="In-batch query-query term")
    doc_doc: bool = Field(True, description="In-batch document-document term (vs the positive)")
    query_doc: bool = Field(True, description="In-batch query-document term")
    in_batch_hard_negatives: bool = Field(
        True, description="In-batch documents include other instances' hard negatives"
    )
    mask_false_negatives: bool = Field(True, description="Apply the false-negative mask")
    matryoshka_dims: list[int] | None = Field(
        None, description="Average the loss over these embedding sizes (MRL); null = full size only"
    )
    matryoshka_weights: list[float] | None = Field(
        None, description="Weights of matryoshka_dims; null = equal"
    )
    chunk_size: int | None = Field(
        None,
        gt=0,
        description="GradCache: encode at most this many texts at a time with gradients (same loss and gradients); null = all at once",
    )

    @model_validator(mode="after")
    def _check_mrl(self) -> EmbedderTrainingConfig:
        if self.matryoshka_weights is not None and (
            self.matryoshka_dims is None or len(self.matryoshka_weights) != len(self.matryoshka_dims)
        ):
            raise ValueError("matryoshka_weights needs matryoshka_dims of the same length")
        return self


class RerankerTrainingConfig(TrainingConfig):
    """Fine-tune a Qwen3 reranker with the yes/no SFT loss."""

    full_vocab: bool = Field(
        False, description="Softmax over the whole vocabulary instead of the two tokens yes/no"
    )
    chunk_size: int | None = Field(
        None,
        gt=0,
        description="Pairs per forward/backward (gradient accumulation inside a step); null = all at once",
    )


C = TypeVar("C", bound=TrainingConfig)


def load_config(path: str | Path, cls: type[C]) -> C:
    """Read a YAML (``.yaml``/``.yml``) or JSON file into ``cls``; errors name the field and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        raw = yaml.safe_load(text)
    elif path.suffix == ".json":
        raw = json.loads(text)
    else:
        raise ValueError(f"config file {path} must end in .yaml, .yml or .json")
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a mapping of fields, got {type(raw).__name__}")
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        lines = [
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in e.errors()
        ]
        raise ValueError(f"invalid {cls.__name__} in {path}:\n  " + "\n  ".join(lines)) from None
