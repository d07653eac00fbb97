"""An embedforge model behind the ``mteb`` package's encoder protocol, so ``mteb.evaluate`` runs it.

The protocol (mteb 2.x ``EncoderProtocol``) is met by duck typing: ``encode(inputs, *,
task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs)`` where ``inputs`` yields batches
``{"text": [...], ...}``, plus ``similarity``, ``similarity_pairwise`` and ``mteb_model_meta``.
mteb itself is imported only for ``mteb_model_meta``.

Instructions follow the official Qwen3 evaluation (see :mod:`embedforge.evaluation.instructions`):
retrieval instructs queries only, STS / pair classification and bitext mining both sides with
their fixed instructions, other tasks every text. Tasks missing from the table fall back to the
task's own ``prompt`` in its mteb metadata, then to the model-card default for retrieval queries.

Example::

    import mteb
    from embedforge import Embedder
    from embedforge.evaluation.mteb_adapter import MtebEncoder

    model = MtebEncoder(Embedder.from_pretrained("Qwen/Qwen3-Embedding-0.6B"), dim=512)
    mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from embedforge import prompts
from embedforge.evaluation.encoding import EncoderLike, side_prompt, truncate_normalize
from embedforge.evaluation.instructions import canonical_task_name, is_instruction_aware
from embedforge.inputs import MIN_DIM, check_dim

_STS_TYPES = {"STS", "PairClassification"}
_BITEXT_TYPES = {"BitextMining"}


def _is_query(prompt_type: Any) -> bool:
    return prompt_type is not None and str(getattr(prompt_type, "value", prompt_type)) == "query"


def _metadata_prompt(task_metadata: Any, query: bool) -> str | None:
    """The task's own prompt from its mteb metadata (a str, or a dict keyed by prompt type)."""
    p = getattr(task_metadata, "prompt", None)
    if isinstance(p, Mapping):
        p = p.get("query" if query else "document")
    return p or None


def mteb_instruction(task_metadata: Any, prompt_type: Any) -> str | None:
    """The official Qwen3 instruction for this side of an mteb task (``None``: no instruction)."""
    name = canonical_task_name(getattr(task_metadata, "name", None))
    task_type = str(getattr(task_metadata, "type", ""))
    query = _is_query(prompt_type)
    if task_type in _STS_TYPES:
        return prompts.QWEN3_STS_INSTRUCTION
    if task_type in _BITEXT_TYPES:
        return prompts.QWEN3_BITEXT_INSTRUCTION
    if "Retrieval" in task_type:
        symmetric = name in prompts.QWEN3_SYMMETRIC_RETRIEVAL_TASKS
        if not query and not symmetric:
            return None  # documents take no instruction
        return (
            prompts.QWEN3_RETRIEVAL_INSTRUCTIONS.get(name or "")
            or _metadata_prompt(task_metadata, query)
            or prompts.DEFAULT_QUERY_INSTRUCTION
        )
    return prompts.QWEN3_ALL_TEXT_INSTRUCTIONS.get(name or "") or _metadata_prompt(task_metadata, query)


def _texts(inputs: Iterable[Any]) -> list[str]:
    """All texts of an mteb DataLoader (batches ``{"text": [...]}``), or of a plain list of str."""
    out: list[str] = []
    for item in inputs:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, Mapping) and "text" in item:
            out.extend(item["text"])
        else:
            raise TypeError(
                f"cannot read texts from input item of type {type(item).__name__}: expected str or {{'text': [...]}}"
            )
    return out


class MtebEncoder:
    """Wrap an :class:`embedforge.Embedder` as an mteb encoder.

    ``dim`` truncates (Matryoshka) and re-normalises every embedding. ``instructions`` maps task
    names to an instruction that overrides the official table (applied by the same side rules).
    ``use_instructions`` defaults to whether the model is a Qwen3 (instruction-aware) model.
    """

    def __init__(
        self,
        embedder: EncoderLike,
        *,
        dim: int | None = None,
        instructions: Mapping[str, str] | None = None,
        use_instructions: bool | None = None,
        name: str | None = None,
        revision: str | None = None,
    ) -> None:
        hidden = int(getattr(embedder, "hidden_size", 0) or 0)
        if hidden:
            check_dim(dim, hidden)  # the library's one Matryoshka rule
        elif dim is not None and dim < MIN_DIM:
            raise ValueError(f"dim={dim} is out of range: Matryoshka dims must be at least {MIN_DIM}")
        self.embedder = embedder
        self.dim = dim
        self.instructions = {canonical_task_name(k): v for k, v in (instructions or {}).items()}
        self.use_instructions = (
            is_instruction_aware(embedder) if use_instructions is None else use_instructions
        )
        self.name = (
            name or f"embedforge/{str(getattr(embedder, 'name_or_path', 'model')).rstrip('/').split('/')[-1]}"
        )
        self.revision = revision
        self.last_prompt: str | None = None  # the prompt of the latest encode call (for logs and tests)

    def prompt_for(self, task_metadata: Any, prompt_type: Any = None) -> str:
        """The exact text put before every input of this task side."""
        query = _is_query(prompt_type)
        if not self.use_instructions:
            return side_prompt(self.embedder, None, query_side=query)
        name = canonical_task_name(getattr(task_metadata, "name", None))
        instruction = mteb_instruction(task_metadata, prompt_type)
        if name in self.instructions and instruction is not None:
            instruction = self.instructions[name]
        if instruction is None:
            return ""
        return side_prompt(self.embedder, instruction, query_side=query)

    def encode(
        self,
        inputs: Iterable[Any],
        *,
        task_metadata: Any,
        hf_split: str = "",
        hf_subset: str = "",
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """(n, dim) float32 embeddings of every text in ``inputs``, in order."""
        texts = _texts(inputs)
        self.last_prompt = prompt = self.prompt_for(task_metadata, prompt_type)
        emb = self.embedder.encode(
            texts, prompt=prompt, show_progress=bool(kwargs.get("show_progress_bar", False))
        )
        return (
            truncate_normalize(emb, self.dim) if self.dim is not None else np.asarray(emb, dtype=np.float32)
        )

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity matrix (n1, n2)."""
        a = torch.nn.functional.normalize(
            torch.as_tensor(np.asarray(embeddings1), dtype=torch.float32).reshape(
                -1, self._width(embeddings1)
            ),
            dim=-1,
        )
        b = torch.nn.functional.normalize(
            torch.as_tensor(np.asarray(embeddings2), dtype=torch.float32).reshape(
                -1, self._width(embeddings2)
            ),
            dim=-1,
        )
        return a @ b.T  # (n1, n2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """Cosine similarity of row i with row i: (n,)."""
        a = torch.nn.functional.normalize(
            torch.as_tensor(np.asarray(embeddings1), dtype=torch.float32), dim=-1
        )
        b = torch.nn.functional.normalize(
            torch.as_tensor(np.asarray(embeddings2), dtype=torch.float32), dim=-1
        )
        return (a * b).sum(-1)

    @staticmethod
    def _width(x: Any) -> int:
        return int(np.asarray(x).shape[-1])

    @property
    def mteb_model_meta(self) -> Any:
        """mteb's ``ModelMeta`` for this model (needs the ``mteb`` package)."""
        try:
            from mteb.models import ModelMeta
        except ImportError as e:
            raise ImportError("mteb_model_meta needs the mteb package: pip install mteb") from e
        model = getattr(self.embedder, "model", None)
        n_params = sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else None
        return ModelMeta.create_empty(
            {
                "name": self.name,
                "revision": self.revision or "local",
                "n_parameters": n_params,
                "max_tokens": getattr(self.embedder, "max_length", None),
                "embed_dim": self.dim or getattr(self.embedder, "hidden_size", None),
                "similarity_fn_name": "cosine",
                "use_instructions": self.use_instructions,
                "framework": ["PyTorch"],
                "open_weights": True,
            }
        )
