"""The few places where the index touches modules it does not own: the corpus reader, the model
spec and the prompt of each side. Each is one small function, so a change there is one edit here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embedforge.corpus import Document, iter_documents


class EmbedderLike(Protocol):
    """What the index needs of :class:`embedforge.Embedder`."""

    fingerprint: str
    name_or_path: str
    max_length: int
    pooling: str
    normalize: bool

    @property
    def hidden_size(self) -> int: ...

    def query_prompt(self, instruction: str | None = None) -> str: ...

    def encode(self, texts: Any, *, prompt: str = "", dim: int | None = None) -> Any: ...


class RerankerLike(Protocol):
    """What retrieve-then-rerank needs of :class:`embedforge.Reranker` (its shared-prefix path)."""

    def score_pairs(self, pairs: Any, instruction: str | None = None, **kwargs: Any) -> np.ndarray: ...


Doc = Document  # one corpus record: id, text, title, metadata; ``full_text`` is what is embedded


def _from_record(rec: Any, where: str) -> Doc:
    if isinstance(rec, Doc):
        return rec
    if isinstance(rec, Mapping):  # a plain dict: id (or _id), text, optional title, the rest metadata
        rid = rec.get("id", rec.get("_id"))
        if rid is None or not isinstance(rec.get("text"), str):
            raise ValueError(f"{where}: a record needs an id (or _id) and a str text, got keys {sorted(rec)}")
        meta = {k: v for k, v in rec.items() if k not in ("id", "_id", "text", "title")}
        return Doc(str(rid), rec["text"], str(rec.get("title") or ""), meta)
    # embedforge.corpus.Document (id, text, title, metadata)
    return Doc(str(rec.id), rec.text, rec.title or "", dict(rec.metadata or {}))


def iter_docs(
    corpus: str | os.PathLike | Iterable[Any], *, field: str | None = None, id_field: str | None = None
) -> Iterator[Doc]:
    """Documents of a corpus file (anything :func:`embedforge.corpus.iter_documents` reads) or of
    an iterable of ``Document`` objects / dicts."""
    if isinstance(corpus, str | os.PathLike):
        path = Path(corpus)
        if not path.exists():
            raise FileNotFoundError(f"corpus {str(path)!r} does not exist")
        for i, rec in enumerate(_read_path(path, field, id_field)):
            yield _from_record(rec, f"{path} record {i + 1}")
        return
    for i, rec in enumerate(corpus):
        yield _from_record(rec, f"corpus record {i + 1}")


def _read_path(path: Path, field: str | None, id_field: str | None) -> Iterator[Any]:
    # duplicate ids: the last record wins (at its own position), with a warning naming them
    return iter_documents(path, field=field, id_field=id_field, on_duplicate="last")


def document_prompt(embedder: EmbedderLike) -> str:
    """The prompt put before every document (none for Qwen3 and MiniLM)."""
    return dict(getattr(embedder, "prompts", None) or {}).get("document", "")


def spec_of(embedder: EmbedderLike, spec: Any = None) -> dict[str, Any]:
    """The model spec recorded in the manifest, so ``search`` can load the same model again."""
    if spec is not None:
        out = {k: v for k, v in spec.to_dict().items() if k not in ("device", "threads", "batch_tokens")}
    else:
        out = {"model": embedder.name_or_path, "max_length": embedder.max_length}
    model = str(out.get("model") or "")
    if model and Path(model).exists():  # a local directory: record it absolute
        out["model"] = str(Path(model).resolve())
    return out


def load_embedder(spec: Mapping[str, Any], **overrides: Any) -> EmbedderLike:
    """Load the embedder a manifest names; ``overrides`` (device, threads, batch_tokens) win."""
    from embedforge.spec import ModelSpec

    args = {**spec, **{k: v for k, v in overrides.items() if v is not None}}
    return ModelSpec.from_dict(args).load_embedder()


def as_embedder(embedder_or_spec: Any) -> tuple[EmbedderLike, Any]:
    """``(embedder, spec or None)`` from an Embedder or a ModelSpec."""
    if hasattr(embedder_or_spec, "load_embedder"):
        return embedder_or_spec.load_embedder(), embedder_or_spec
    if hasattr(getattr(embedder_or_spec, "spec", None), "to_dict"):  # scaleout.RayEmbedder: its ModelSpec
        return embedder_or_spec, embedder_or_spec.spec
    return embedder_or_spec, None
