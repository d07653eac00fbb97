"""Reading texts and writing embeddings for the command line: txt, JSONL, parquet in; .npy or parquet out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TEXT_FIELDS = ("text", "query", "document", "sentence", "content")


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file (blank lines skipped); a bad line raises naming the file and line number."""
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return rows


def read_texts(path: str | Path, field: str | None = None) -> tuple[list[str], list[str] | None]:
    """Texts (and ids when the file has them) from a .txt (one per line), .jsonl or .parquet file.

    JSONL/parquet rows take ``field`` or the first of ``text, query, document, sentence, content``;
    ids come from ``_id`` or ``id`` when present. A BEIR corpus row with a ``title`` gets
    ``title + " " + text``, as BEIR and MTEB do.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"input file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        lines = p.read_text(encoding="utf-8").splitlines()
        return lines, None
    if suffix in (".jsonl", ".json"):
        rows = read_jsonl(p)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(p).to_pylist()
    else:
        raise ValueError(f"unsupported input {str(p)!r}: use .txt, .jsonl or .parquet")
    return _texts_from_rows(rows, field, str(p))


def _texts_from_rows(rows: list[dict], field: str | None, where: str) -> tuple[list[str], list[str] | None]:
    if not rows:
        return [], None
    keys = rows[0].keys()
    name = field or next((f for f in TEXT_FIELDS if f in keys), None)
    if name is None or name not in keys:
        raise ValueError(f"{where}: no text field {field or TEXT_FIELDS!r} in rows (keys: {sorted(keys)})")
    texts = []
    for i, row in enumerate(rows):
        value = row.get(name)
        if not isinstance(value, str):
            raise ValueError(f"{where}: row {i} field {name!r} is {type(value).__name__}, expected str")
        title = row.get("title") if name == "text" else None
        texts.append(f"{title} {value}".strip() if title else value)
    id_key = "_id" if "_id" in keys else "id" if "id" in keys else None
    ids = [str(row.get(id_key)) for row in rows] if id_key else None
    return texts, ids


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
