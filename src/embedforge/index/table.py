"""The LanceDB table of an index: schema, rows from documents, scans and filters.

Columns: ``id`` (string, unique), ``text``, ``title``, ``vector`` (fixed-size list of float32),
``content_hash`` (what was embedded: a changed document gets a new hash), then one column per
metadata field of the corpus records, filterable with SQL ``where`` expressions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ._seams import Doc
from .manifest import RESERVED_COLUMNS, TABLE, TABLE_DIR

_DELETE_CHUNK = 1000


def content_hash(doc: Doc, prompt: str) -> str:
    """sha256 (16 hex) of everything a row is made of: the embedded text, its prompt, the metadata."""
    payload = json.dumps(
        [prompt, doc.full_text, doc.title, doc.text, dict(doc.metadata)],
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def metadata_schema(docs: Sequence[Doc]) -> pa.Schema:
    """Column types of the records' extra fields, inferred over every record."""
    names: dict[str, None] = {}
    for d in docs:
        names.update(dict.fromkeys(d.metadata))
    bad = [n for n in names if n in RESERVED_COLUMNS or n.startswith("_")]
    if bad:
        raise ValueError(
            f"metadata fields {bad} clash with the index's own columns {list(RESERVED_COLUMNS)} "
            "(or start with '_'): rename them in the corpus"
        )
    if not names:
        return pa.schema([])
    try:
        table = pa.Table.from_pylist([{n: d.metadata.get(n) for n in names} for d in docs])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"metadata fields have mixed types across records: {exc}") from None
    # a field that is null in every record has no type: store it as a string column
    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema])


def table_schema(dim: int, meta: pa.Schema) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("text", pa.string()),
            pa.field("title", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("content_hash", pa.string()),
            *meta,
        ]
    )


def rows(docs: Sequence[Doc], hashes: Sequence[str], vectors: np.ndarray, schema: pa.Schema) -> pa.Table:
    """An Arrow table of documents and their vectors in ``schema`` (metadata missing -> null)."""
    dim = schema.field("vector").type.list_size
    vec = np.ascontiguousarray(vectors, dtype=np.float32)  # (n, dim)
    meta_names = schema.names[5:]
    extra = sorted({k for d in docs for k in d.metadata} - set(meta_names))
    if extra:
        raise ValueError(
            f"fields {extra} are not columns of this index (its metadata columns: {meta_names}); "
            "build a new index to add columns"
        )
    data: dict[str, Any] = {
        "id": [d.id for d in docs],
        "text": [d.text for d in docs],
        "title": [d.title for d in docs],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1), pa.float32()), dim),
        "content_hash": list(hashes),
    }
    for n in meta_names:
        data[n] = [d.metadata.get(n) for d in docs]
    try:
        return pa.table(data, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"metadata does not fit the index's column types {meta_names}: {exc}") from None


def connect(index_dir: Path):
    # Lance's Rust log prints a deprecation line per search to stderr; keep errors only unless the user
    # set LANCE_LOG (read once, when lancedb is first imported)
    os.environ.setdefault("LANCE_LOG", "error")
    import lancedb

    return lancedb.connect(str(index_dir / TABLE_DIR))


def open_table(index_dir: Path):
    """The table, or None when no row was ever committed."""
    db = connect(index_dir)
    try:
        return db.open_table(TABLE)
    except (ValueError, FileNotFoundError):
        return None


def create_table(index_dir: Path, schema: pa.Schema):
    return connect(index_dir).create_table(TABLE, schema=schema, exist_ok=True)


def scan(table, columns: Sequence[str], where: str | None = None, *, row_ids: bool = False) -> pa.Table:
    """Columns of every row (matching ``where``) in table order."""
    q = table.search().select(list(columns))
    if where is not None:
        q = q.where(where)
    if row_ids:
        q = q.with_row_id(True)
    return q.limit(None).to_arrow()


def check_where(table, where: str | None) -> None:
    """A clear error for a ``where`` expression LanceDB cannot parse or that names no column."""
    if where is None:
        return
    if not isinstance(where, str) or not where.strip():
        raise ValueError(f"where must be a non-empty SQL expression, got {where!r}")
    try:
        table.count_rows(where)
    except ValueError as exc:  # lancedb: "Invalid input, Error parsing statement: ..."
        cols = [n for n in table.schema.names if n != "vector"]
        raise ValueError(f"where {where!r} is not a valid filter: {exc}. Columns: {cols}") from None


def sql_list(ids: Sequence[str]) -> str:
    return ", ".join("'" + i.replace("'", "''") + "'" for i in ids)


def delete_ids(table, ids: Sequence[str]) -> None:
    for s in range(0, len(ids), _DELETE_CHUNK):
        table.delete(f"id IN ({sql_list(ids[s : s + _DELETE_CHUNK])})")


@dataclass
class Vectors:
    """Every row's id, row id and vector, in table order, at one table version."""

    version: int
    ids: list[str]
    row_ids: np.ndarray  # (n,) uint64
    matrix: np.ndarray | None  # (n, dim) float32; None once quantised codes replaced it in memory

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        where = {d: i for i, d in enumerate(self.ids)}
        return np.asarray(sorted(where[d] for d in ids if d in where), dtype=np.int64)


def load_vectors(table, dim: int) -> Vectors:
    t = scan(table, ["id", "vector"], row_ids=True)
    vec = t["vector"].combine_chunks()
    flat = vec.values.to_numpy(zero_copy_only=False) if len(vec) else np.zeros(0, np.float32)
    return Vectors(
        version=table.version,
        ids=t["id"].to_pylist(),
        row_ids=t["_rowid"].to_numpy(),
        matrix=np.array(flat, dtype=np.float32).reshape(-1, dim),  # a writable copy
    )


def fetch(table, row_ids: Sequence[int], columns: Sequence[str]) -> pa.Table:
    """Rows by row id, in the order asked."""
    if not len(row_ids):
        return pa.table({c: [] for c in columns})
    t = table.take_row_ids([int(r) for r in row_ids]).select(list(columns)).with_row_id().to_arrow()
    pos = {int(r): i for i, r in enumerate(t["_rowid"].to_pylist())}
    return t.take([pos[int(r)] for r in row_ids])
