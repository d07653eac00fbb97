"""What every stage of a run shares: the recipe, the stage directories, the embedding store, the
completed upstream stages, the identities of models and data files, and the base model (loaded once)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedforge.recipe.config import Recipe, RecipeError
from embedforge.recipe.state import FileHashes, StageRecord
from embedforge.spec import ModelSpec
from embedforge.store import EmbeddingStore

if TYPE_CHECKING:
    from embedforge.embedder import Embedder

MODEL_DIR = "model"
# files of a model directory that say how it was trained, not what it is
TRAINING_SIDE_FILES = frozenset(
    {"metrics.jsonl", "training_config.json", "loss_curve.png", "trainer_state.pt"}
)


@dataclass
class StageOutput:
    """What a stage function returns: the files that are its result and a summary for the report."""

    files: list[Path]
    summary: dict[str, Any] = field(default_factory=dict)


def versions() -> dict[str, str]:
    """The versions of the code that decides a model stage's result."""
    import torch
    import transformers

    import embedforge

    return {
        "embedforge": embedforge.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def model_files(model_dir: Path) -> list[Path]:
    """The files that make a saved model (weights, config, tokenizer, sentence-transformers layout)."""
    out = []
    for f in model_dir.rglob("*"):
        rel = f.relative_to(model_dir)
        if f.is_file() and rel.parts[0] != "checkpoints" and f.name not in TRAINING_SIDE_FILES:
            out.append(f)
    return sorted(out)


def seeded_subset(n: int, keep: Sequence[int], limit: int | None, seed: int) -> list[int]:
    """Row indices: every row of ``keep`` plus a seeded sample of the others, ``limit`` in all (at
    least ``keep``); in their original order. ``limit=None`` keeps every row."""
    if limit is None or limit >= n:
        return list(range(n))
    must = set(keep)
    others = [i for i in range(n) if i not in must]
    extra = random.Random(seed).sample(others, max(0, min(len(others), limit - len(must))))
    return sorted(must | set(extra))


def read_model_type(path: Path) -> str:
    try:
        return str(json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type", ""))
    except (FileNotFoundError, ValueError):
        return ""


@dataclass
class Context:
    """One run of one recipe."""

    recipe: Recipe
    show_progress: bool = True
    log: Callable[[str], None] = print
    hashes: FileHashes = field(default_factory=FileHashes)
    records: dict[str, StageRecord] = field(default_factory=dict)  # completed stages of this run
    _embedders: dict[str, Embedder] = field(default_factory=dict)

    # ------------------------------------------------------------------ places
    def dir(self, stage: str) -> Path:
        return self.recipe.output_dir / stage

    @cached_property
    def store(self) -> EmbeddingStore:
        return EmbeddingStore(self.recipe.store_dir)

    def on(self, stage: str) -> bool:
        return self.recipe.stages.on(stage)

    # ------------------------------------------------------------------ inputs and identities
    def file_hash(self, path: Path | None, what: str, stage: str) -> str:
        """sha256 of an input file; a missing one is an error naming the stage and the file."""
        if path is None or not path.is_file():
            raise RecipeError(f"stage {stage!r}: {what} {path} not found (recipe {self.recipe.source})")
        return self.hashes(path)

    def beir_hash(self, root: Path | None, split: str, what: str, stage: str) -> dict[str, str]:
        """Checksums of the files of a BEIR directory that one split reads."""
        if root is None or not root.is_dir():
            raise RecipeError(
                f"stage {stage!r}: {what} directory {root} not found (recipe {self.recipe.source})"
            )
        files = {
            "corpus": root / "corpus.jsonl",
            "queries": root / "queries.jsonl",
            "qrels": root / "qrels" / f"{split}.tsv",
        }
        return {k: self.file_hash(p, f"{what} file", stage) for k, p in files.items()}

    @cached_property
    def base_path(self) -> Path:
        """The base model's local directory (a Hub id is fetched like every model load)."""
        from embedforge.loading import resolve_checkpoint

        spec = self.recipe.model
        try:
            return resolve_checkpoint(spec.model, revision=spec.revision)
        except FileNotFoundError as e:
            raise RecipeError(f"base model: {e} (recipe {self.recipe.source})") from None

    def base_identity(self) -> dict[str, Any]:
        from embedforge.loading import fingerprint

        return {"spec": self.recipe.model.to_dict(), "fingerprint": fingerprint(self.base_path)}

    def upstream(self, stage: str) -> StageRecord:
        rec = self.records.get(stage)
        if rec is None or not rec.complete or rec.outputs_hash is None:
            raise RecipeError(
                f"stage {stage!r} has not completed in this run"
            )  # the runner's order prevents it
        return rec

    def model_identity(self, stage: str) -> dict[str, Any]:
        """``base``, or a model stage's outputs hash."""
        if stage == "base":
            return {"base": self.base_identity()}
        return {"stage": stage, "outputs_hash": self.upstream(stage).outputs_hash}

    # ------------------------------------------------------------------ models
    def model_path(self, stage: str) -> Path:
        return self.base_path if stage == "base" else self.dir(stage) / MODEL_DIR

    def model_spec(self, stage: str) -> ModelSpec:
        if stage == "base":
            return self.recipe.model
        return self.recipe.model.replace(model=str(self.model_path(stage)), revision=None)

    def embedder(self, stage: str) -> Embedder:
        """The model of ``stage`` (or ``base``), loaded once per run."""
        if stage not in self._embedders:
            self._embedders[stage] = self.model_spec(stage).load_embedder()
        return self._embedders[stage]

    def forget(self, stage: str) -> None:
        """Drop a loaded model (its stage is about to write it again)."""
        self._embedders.pop(stage, None)

    @cached_property
    def use_instructions(self) -> bool:
        if self.recipe.use_instructions is not None:
            return self.recipe.use_instructions
        return read_model_type(self.base_path).startswith("qwen3")  # evaluation.instructions' rule

    def start_model(self) -> str:
        """The model the supervised stage and the miner start from: the weak model when it runs."""
        return "weak" if self.on("weak") else "base"

    def synthetic_pairs(self) -> tuple[str, Path] | None:
        """(stage, file) of the synthetic pairs the training stages read: filtered when the filter runs."""
        if self.on("filter"):
            return "filter", self.dir("filter") / "kept.jsonl"
        if self.on("synthesize"):
            return "synthesize", self.dir("synthesize") / "records.jsonl"
        return None

    def labeled_instruction(self) -> str | None:
        """The instruction of the labelled queries: the one evaluation gives the task (none for models
        that take none)."""
        from embedforge.evaluation.instructions import TaskKind, choose_instructions

        if not self.use_instructions or self.recipe.data.labeled is None:
            return None
        name = self.recipe.data.labeled.name
        return choose_instructions(name, TaskKind.RETRIEVAL, instruction_aware=True).query


__all__ = ["MODEL_DIR", "Context", "StageOutput", "model_files", "seeded_subset", "versions"]
