"""Which instruction goes on which side of a task, following the official Qwen3 evaluation.

The table is data in :mod:`embedforge.prompts`; this module applies its rules:
retrieval instructs the query only (symmetric tasks both sides), STS / pair classification use
"Retrieve semantically similar text" on both sides, bitext mining "Retrieve parallel sentences",
everything else instructs every text. A user instruction overrides the table and is recorded.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

from embedforge import prompts


class TaskKind(str, enum.Enum):
    RETRIEVAL = "retrieval"
    STS = "sts"
    BITEXT = "bitext"


class InstructionSource(str, enum.Enum):
    OFFICIAL = "official"  # the official Qwen3 per-task table
    DEFAULT = "default"  # a Qwen3 model on a task the table does not know: the model-card default
    USER = "user"  # given on the command line / by the caller
    NONE = "none"  # the model takes no instructions


@dataclass(frozen=True)
class InstructionChoice:
    """The instruction put before queries and before documents (``None``: no prompt on that side)."""

    task: str | None
    query: str | None
    document: str | None
    source: InstructionSource

    def to_dict(self) -> dict:
        d = asdict(self)
        d["source"] = self.source.value
        return d


def canonical_task_name(name: str | None) -> str | None:
    """The table's spelling of a task name, matched case-insensitively (``scifact`` -> ``SciFact``)."""
    if not name:
        return None
    known = (
        set(prompts.QWEN3_RETRIEVAL_INSTRUCTIONS)
        | set(prompts.QWEN3_ALL_TEXT_INSTRUCTIONS)
        | prompts.QWEN3_STS_TASKS
        | prompts.QWEN3_PAIR_CLASSIFICATION_TASKS
        | prompts.QWEN3_BITEXT_TASKS
    )
    by_lower = {k.lower(): k for k in known}
    return by_lower.get(name.lower(), name)


def official_instruction(task: str | None, kind: TaskKind) -> InstructionChoice:
    """The official Qwen3 instruction for ``task`` of ``kind``, with the official side rules."""
    name = canonical_task_name(task)
    if kind is TaskKind.STS or name in prompts.QWEN3_PAIR_CLASSIFICATION_TASKS:
        text = prompts.QWEN3_STS_INSTRUCTION
        return InstructionChoice(name, text, text, InstructionSource.OFFICIAL)
    if kind is TaskKind.BITEXT:
        text = prompts.QWEN3_BITEXT_INSTRUCTION
        return InstructionChoice(name, text, text, InstructionSource.OFFICIAL)
    if name in prompts.QWEN3_RETRIEVAL_INSTRUCTIONS:
        text = prompts.QWEN3_RETRIEVAL_INSTRUCTIONS[name]
        doc = text if name in prompts.QWEN3_SYMMETRIC_RETRIEVAL_TASKS else None
        return InstructionChoice(name, text, doc, InstructionSource.OFFICIAL)
    if name in prompts.QWEN3_ALL_TEXT_INSTRUCTIONS:
        text = prompts.QWEN3_ALL_TEXT_INSTRUCTIONS[name]
        return InstructionChoice(name, text, text, InstructionSource.OFFICIAL)
    return InstructionChoice(name, prompts.DEFAULT_QUERY_INSTRUCTION, None, InstructionSource.DEFAULT)


def choose_instructions(
    task: str | None,
    kind: TaskKind,
    *,
    instruction_aware: bool,
    user_instruction: str | None = None,
) -> InstructionChoice:
    """Resolve the instructions of one evaluation.

    ``user_instruction`` overrides the table; its sides follow the task kind (retrieval: queries
    only; STS and bitext: both sides). A model that is not instruction-aware (e.g. all-MiniLM-L6-v2)
    gets no instruction unless the user gives one.
    """
    name = canonical_task_name(task)
    if user_instruction is not None:
        both = kind in (TaskKind.STS, TaskKind.BITEXT)
        return InstructionChoice(
            name, user_instruction, user_instruction if both else None, InstructionSource.USER
        )
    if not instruction_aware:
        return InstructionChoice(name, None, None, InstructionSource.NONE)
    return official_instruction(name, kind)


def is_instruction_aware(embedder: object) -> bool:
    """Qwen3 checkpoints (``model_type`` qwen3*) take ``Instruct: ...\\nQuery:`` prompts."""
    info = getattr(getattr(embedder, "runtime", None), "info", None)  # an ONNX graph records it
    model_type = getattr(info, "model_type", None)
    if model_type is None:
        try:
            config = getattr(getattr(embedder, "model", None), "config", None)
        except TypeError:  # a runtime without a torch module
            config = None
        model_type = getattr(config, "model_type", "")
    return str(model_type).startswith("qwen3")
