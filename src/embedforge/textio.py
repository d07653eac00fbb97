"""Texts in and embeddings out for the command line: any corpus file in; ``.npy`` or ``.parquet`` out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedforge.corpus import iter_records, read_documents, record_id
from embedforge.fileio import read_jsonl

__all__ = ["read_jsonl", "read_texts", "write_embeddings"]


def read_texts(path: str | Path, field: str | None = None) -> tuple[list[str], list[str] | None]:
    """Texts (and ids when the file has them) of a corpus file, read by :mod:`embedforge.corpus`.

    Each text is the document's :attr:`~embedforge.corpus.Document.full_text` (title and text joined
    by the one rule); ids are returned when the records carry an id field (``_id``, ``id``, ...),
    ``None`` otherwise (TXT files, JSONL without ids). A duplicate id is an error naming both lines.
    """
    docs = read_documents(path, field=field)
    first = next(iter_records(path), None)
    has_ids = first is not None and record_id(first)[0] is not None and Path(path).suffix.lower() != ".txt"
    return [d.full_text for d in docs], ([d.id for d in docs] if has_ids else None)


def write_embeddings(path: str | Path, embeddings: np.ndarray, ids: list[str] | None = None) -> None:
    """``.npy`` (the matrix) or ``.parquet`` (``id`` + ``embedding`` list column)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".npy":
        np.save(p, embeddings)
    elif p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids = ids or [str(i) for i in range(len(embeddings))]
        col = pa.FixedSizeListArray.from_arrays(
            pa.array(embeddings.reshape(-1), pa.float32()), embeddings.shape[1]
        )
        pq.write_table(pa.table({"id": ids, "embedding": col}), p)
    else:
        raise ValueError(f"unsupported output {str(p)!r}: use .npy or .parquet")
