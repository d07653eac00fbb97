"""The one corpus reader: documents from BEIR ``corpus.jsonl``, JSONL, TXT, Parquet and CSV files.

Every command that reads documents (``embed``, ``rerank``, ``eval retrieval``, ``synthesize``, the
index) goes through :func:`iter_documents`, so a document is read, identified and joined the same
way everywhere.

Rules (each written once, here):

- **Format** by suffix: ``.jsonl``/``.json`` (one JSON object a line, blank lines skipped), ``.txt``
  (one document a line, split on ``\\n`` and ``\\r\\n`` only), ``.parquet`` (read by record batch),
  ``.csv`` (a header row names the columns).
- **Text**: the field ``field`` when given, else the first of :data:`TEXT_FIELDS` present. It must
  be a string.
- **Title**: a string ``title`` field (``None``/absent: no title). :attr:`Document.full_text` is
  ``(title + " " + text).strip()`` with a title, ``text.strip()`` without — MTEB's rule, the one that
  reproduces its published BEIR figures.
- **Id**: the field ``id_field`` when given (then every record must have it), else the first of
  :data:`ID_FIELDS` present; a record without one (and every TXT line) gets its 0-based row number.
  Ids are strings (an integer id ``1`` becomes ``"1"``).
- **Metadata**: every other field of a record, as read.
- **Duplicate ids**: ``on_duplicate="error"`` (default) raises naming the id and both lines;
  ``"last"`` keeps the last occurrence of each id (at its own position) and warns with the count.
- **Errors** name the file and line (Parquet: the row): bad JSON or UTF-8, a missing text or id
  field, a non-string text, text with a lone surrogate (JSON ``"\\ud800"``).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from embedforge.fileio import iter_jsonl_lines, iter_lines_with_ends, iter_text_lines
from embedforge.inputs import check_unicode

TEXT_FIELDS = ("text", "query", "document", "sentence", "content", "contents", "passage", "body")
ID_FIELDS = ("_id", "id", "doc_id", "docid")
TITLE_FIELD = "title"
SUFFIXES = (".jsonl", ".json", ".txt", ".parquet", ".csv")
OnDuplicate = Literal["error", "last"]


class CorpusWarning(UserWarning):
    """Data that was read but looks wrong (kept duplicates, qrels pointing at missing documents)."""


def document_text(title: str | None, text: str | None) -> str:
    """The one title+text rule: ``(title + " " + text).strip()`` with a title, else ``text.strip()``."""
    text = text or ""
    if title:
        return (title + " " + text).strip()
    return text.strip()


@dataclass(frozen=True)
class Document:
    """One document: its id, text, optional title and the record's other fields."""

    id: str
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def full_text(self) -> str:
        """What is embedded: title and text joined by :func:`document_text`."""
        return document_text(self.title, self.text)


@dataclass(frozen=True)
class Record:
    """One raw row of a corpus file: where it was read and its fields."""

    where: str  # "path:line" (JSONL, TXT, CSV) or "path: row N" (Parquet), for error messages
    row: int  # 0-based index among the file's records
    line: int  # 1-based line of the file (CSV: where the row ends; Parquet: row + 1)
    fields: dict[str, Any]


def _check_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"corpus file {str(p)!r} does not exist")
    if p.suffix.lower() not in SUFFIXES:
        raise ValueError(f"unsupported input {str(p)!r}: use one of {', '.join(SUFFIXES)}")
    return p


def _csv_rows(p: Path) -> Iterator[tuple[int, list[str]]]:
    """(line where the row ends, values) of a CSV file, decoded line by line."""
    reader = csv.reader(line for _, line in iter_lines_with_ends(p))
    try:
        for values in reader:
            yield reader.line_num, values
    except csv.Error as e:
        raise ValueError(f"{p}:{reader.line_num}: bad CSV ({e})") from None


def _csv_records(p: Path) -> Iterator[Record]:
    rows = _csv_rows(p)
    first = next(rows, None)
    if first is None:
        return
    header = first[1]
    if len(set(header)) != len(header):
        raise ValueError(f"{p}:1: the header row repeats a column name: {header}")
    row = 0
    for line, values in rows:
        if not values:
            continue  # blank line
        if len(values) != len(header):
            raise ValueError(
                f"{p}:{line}: {len(values)} columns where the header has {len(header)} ({header})"
            )
        yield Record(f"{p}:{line}", row, line, dict(zip(header, values, strict=True)))
        row += 1


def _check_csv_header(p: Path, field: str | None) -> None:
    """Refuse a CSV file whose header names no text column before reading any row."""
    first = next(_csv_rows(p), None)
    if first is None:
        return
    header = first[1]
    wanted = [field] if field is not None else list(TEXT_FIELDS)
    if not any(name in header for name in wanted):
        raise ValueError(
            f"{p}:1: unsupported input: the CSV header {header} has no text column; "
            f"expected {'the column ' + repr(field) if field else 'one of ' + str(wanted)}"
        )


def _parquet_records(p: Path, batch_rows: int) -> Iterator[Record]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(p).iter_batches(batch_size=batch_rows):
        for fields in batch.to_pylist():
            yield Record(f"{p}: row {row + 1}", row, row + 1, fields)
            row += 1


def iter_records(path: str | Path, *, batch_rows: int = 4096) -> Iterator[Record]:
    """The raw rows of a corpus file in order (TXT lines become ``{"text": line}``), streamed."""
    p = _check_path(path)
    suffix = p.suffix.lower()
    if suffix == ".txt":
        for row, (lineno, line) in enumerate(iter_text_lines(p)):
            yield Record(f"{p}:{lineno}", row, lineno, {"text": line})
    elif suffix in (".jsonl", ".json"):
        for row, (lineno, obj) in enumerate(iter_jsonl_lines(p)):
            yield Record(f"{p}:{lineno}", row, lineno, obj)
    elif suffix == ".parquet":
        yield from _parquet_records(p, batch_rows)
    else:
        yield from _csv_records(p)


def text_field_of(fields: Mapping[str, Any], field: str | None, where: str) -> str:
    """The name of the text field of a record (``field``, or the first of :data:`TEXT_FIELDS`)."""
    if field is not None:
        if field not in fields:
            raise ValueError(f"{where}: no text field {field!r} (fields: {sorted(fields)})")
        return field
    name = next((f for f in TEXT_FIELDS if f in fields), None)
    if name is None:
        raise ValueError(
            f"{where}: no text field; expected one of {list(TEXT_FIELDS)} (fields: {sorted(fields)})"
        )
    return name


def _string(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: field {name!r} is {type(value).__name__} ({value!r:.40}), expected a string"
        )
    return check_unicode(value, f"{where}: field {name!r}")


def record_id(record: Record, id_field: str | None = None) -> tuple[str | None, str]:
    """(id field used, or None when the record has none, and the id) of a record."""
    name = id_field if id_field is not None else next((f for f in ID_FIELDS if f in record.fields), None)
    if name is None:
        return None, str(record.row)
    if name not in record.fields:
        raise ValueError(f"{record.where}: no id field {name!r} (fields: {sorted(record.fields)})")
    value = record.fields[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(
            f"{record.where}: id field {name!r} is {type(value).__name__} ({value!r:.40}), "
            "expected a string or an integer"
        )
    return name, check_unicode(str(value), f"{record.where}: id field {name!r}")


def to_document(
    record: Record,
    *,
    field: str | None = None,
    id_field: str | None = None,
    title_field: str | None = TITLE_FIELD,
) -> Document:
    """Apply the module's rules (text, title, id, metadata) to one raw record."""
    fields = record.fields
    text_name = text_field_of(fields, field, record.where)
    text = _string(fields[text_name], record.where, text_name)
    id_name, doc_id = record_id(record, id_field)
    title = ""
    title_name = title_field if title_field is not None and title_field != text_name else None
    if title_name is not None and fields.get(title_name) is not None:
        title = _string(fields[title_name], record.where, title_name)
    used = {text_name, id_name, title_name}
    metadata = {k: v for k, v in fields.items() if k not in used}
    return Document(doc_id, text, title, metadata)


def _last_rows(path: str | Path, id_field: str | None) -> tuple[dict[str, int], list[str]]:
    """First pass of ``on_duplicate="last"``: the row kept for each id and a description per duplicate."""
    last: dict[str, tuple[int, str]] = {}
    dups: list[str] = []
    for record in iter_records(path):
        _, doc_id = record_id(record, id_field)
        if doc_id in last:
            dups.append(f"{doc_id!r} ({last[doc_id][1]} and {record.where})")
        last[doc_id] = (record.row, record.where)
    return {k: row for k, (row, _) in last.items()}, dups


def iter_documents(
    path: str | Path,
    *,
    field: str | None = None,
    id_field: str | None = None,
    title_field: str | None = TITLE_FIELD,
    on_duplicate: OnDuplicate = "error",
) -> Iterator[Document]:
    """Stream the documents of a corpus file in file order (see the module docstring for the rules).

    Memory beyond the current record is one id per document (for the duplicate check);
    ``on_duplicate="last"`` reads the file twice (ids first) and still streams.
    """
    if on_duplicate not in ("error", "last"):
        raise ValueError(f"on_duplicate must be 'error' or 'last', got {on_duplicate!r}")
    keep: dict[str, int] | None = None
    if on_duplicate == "last":
        keep, dups = _last_rows(path, id_field)
        if dups:
            warnings.warn(
                f"{path}: {len(dups)} duplicate document ids; kept the last occurrence of each, "
                f"e.g. {', '.join(dups[:3])}",
                CorpusWarning,
                stacklevel=2,
            )
    suffix = _check_path(path).suffix.lower()
    if suffix == ".txt":
        field, title_field = None, None  # a TXT line is the text, whatever the options say
    elif suffix == ".csv":
        _check_csv_header(Path(path), field)
    seen: dict[str, str] = {}
    for record in iter_records(path):
        doc = to_document(record, field=field, id_field=id_field, title_field=title_field)
        if keep is not None:
            if keep[doc.id] != record.row:
                continue
        elif doc.id in seen:
            raise ValueError(
                f"{record.where}: duplicate document id {doc.id!r} (first at {seen[doc.id]}); "
                "ids must be unique (read with on_duplicate='last' to keep the last one)"
            )
        else:
            seen[doc.id] = record.where
        yield doc


def read_documents(
    path: str | Path,
    *,
    field: str | None = None,
    id_field: str | None = None,
    title_field: str | None = TITLE_FIELD,
    on_duplicate: OnDuplicate = "error",
) -> list[Document]:
    """All documents of a corpus file (:func:`iter_documents` as a list)."""
    return list(
        iter_documents(
            path, field=field, id_field=id_field, title_field=title_field, on_duplicate=on_duplicate
        )
    )


__all__ = [
    "ID_FIELDS",
    "TEXT_FIELDS",
    "CorpusWarning",
    "Document",
    "Record",
    "document_text",
    "iter_documents",
    "iter_records",
    "read_documents",
    "record_id",
    "text_field_of",
    "to_document",
]
