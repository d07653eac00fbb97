"""Training records (trainer-ready JSONL) and the BEIR-train-qrels converter.

One JSON object per line::

    {"instruction": str | null, "query": str, "positive": str, "negatives": [str, ...], ...}

Reranker data may instead hold labelled pairs ``{"instruction"?, "query", "document", "label": 0|1}``;
embedding records also serve the reranker (the positive is labelled 1, each negative 0). Extra keys
(``"provenance"`` ...) are kept when read and ignored by the trainers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedforge.textio import read_jsonl as read_rows


class EmbeddingRecord(BaseModel):
    """One query with its positive document and hard negatives."""

    model_config = ConfigDict(extra="allow")

    instruction: str | None = Field(
        None, description="Task instruction of the query; null = the trainer's default"
    )
    query: str = Field(..., min_length=1, description="The query text (without instruction)")
    positive: str = Field(..., min_length=1, description="A relevant document")
    negatives: list[str] = Field(default_factory=list, description="Hard negatives: irrelevant documents")


class RerankerPair(BaseModel):
    """One labelled (query, document) pair for the reranker."""

    model_config = ConfigDict(extra="allow")

    instruction: str | None = Field(None, description="Task instruction; null = the reranker's default")
    query: str = Field(..., min_length=1)
    document: str = Field(..., min_length=1)
    label: Literal[0, 1] = Field(..., description="1 = relevant (target token 'yes'), 0 = not ('no')")


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a bad line raises naming the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data {path} not found")
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"training data {path} holds no records")
    return rows


def write_jsonl(rows: Iterable[BaseModel | dict], path: str | Path) -> int:
    """Write records one per line (UTF-8, unescaped); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            obj = r.model_dump() if isinstance(r, BaseModel) else r
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n


def _validate(rows: Sequence[dict], model: type[BaseModel], path: str | Path) -> list:
    out = []
    for n, row in enumerate(rows, 1):
        try:
            out.append(model.model_validate(row))
        except ValidationError as e:
            raise ValueError(
                f"{path}: record {n} is not a valid {model.__name__}: {e.errors()[0]['loc']} {e.errors()[0]['msg']}"
            ) from e
    return out


def load_embedding_records(path: str | Path) -> list[EmbeddingRecord]:
    """Validated embedding records of a JSONL file."""
    return _validate(read_jsonl(path), EmbeddingRecord, path)


def load_reranker_pairs(path: str | Path) -> list[RerankerPair]:
    """Labelled pairs of a JSONL file holding pair records, embedding records, or both."""
    pairs: list[RerankerPair] = []
    for n, row in enumerate(read_jsonl(path), 1):
        if "document" in row:
            pairs.extend(_validate([row], RerankerPair, f"{path} (record {n})"))
            continue
        rec = _validate([row], EmbeddingRecord, f"{path} (record {n})")[0]
        pairs.append(
            RerankerPair(instruction=rec.instruction, query=rec.query, document=rec.positive, label=1)
        )
        pairs.extend(
            RerankerPair(instruction=rec.instruction, query=rec.query, document=d, label=0)
            for d in rec.negatives
        )
    return pairs


def beir_train_records(
    data_dir: str | Path, split: str = "train", *, instruction: str | None = None, min_score: int = 1
) -> tuple[list[EmbeddingRecord], list[str]]:
    """Convert a BEIR split's qrels to records: one per (query, document with score >= min_score).

    Returns the records (``negatives`` empty; fill them with
    :func:`embedforge.training.mining.mine_hard_negatives`) and the corpus texts
    (``title + " " + text``, MTEB's convention, from :mod:`embedforge.evaluation.data`).
    """
    from embedforge.evaluation.data import load_beir

    data = load_beir(data_dir, split)
    text_of = dict(zip(data.corpus_ids, data.corpus_texts, strict=True))
    records = []
    for qid, qtext in zip(data.query_ids, data.query_texts, strict=True):
        for did, score in data.qrels[qid].items():
            if score >= min_score:
                if did not in text_of:
                    raise ValueError(
                        f"qrels of {data_dir} ({split}) name document {did!r}, which is not in the corpus"
                    )
                records.append(
                    EmbeddingRecord(
                        instruction=instruction,
                        query=qtext,
                        positive=text_of[did],
                        query_id=qid,  # type: ignore[call-arg]  # extra="allow": kept ids for mining
                        positive_id=did,  # type: ignore[call-arg]
                    )
                )
    if not records:
        raise ValueError(f"no qrels with score >= {min_score} in split {split!r} of {data_dir}")
    return records, data.corpus_texts
