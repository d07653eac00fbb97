"""Inputs of a synthesis run: the corpus (BEIR ``corpus.jsonl``, JSONL with a text field, or a folder of
text files) and the persona library (Persona Hub JSONL ``{"persona": ...}`` or one persona a line).

A JSONL document may carry its language (``"language"`` or ``"lang"``: a code such as ``"zh"`` or a
name); it then overrides the run's corpus language in that document's prompts (multilingual corpora)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from embedforge.corpus import iter_records, record_id, to_document
from embedforge.synthesis.config import language_name

TEXT_SUFFIXES = (".txt", ".md", ".rst")


LANGUAGE_FIELDS = ("language", "lang")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    language: str | None = (
        None  # the document's own language (a JSONL "language"/"lang" field), else the run's
    )


def _language(metadata: Mapping[str, Any]) -> str | None:
    lang = next(
        (metadata[f] for f in LANGUAGE_FIELDS if isinstance(metadata.get(f), str) and metadata[f].strip()),
        None,
    )
    return language_name(lang) if lang else None


def _file_documents(p: Path, text_field: str | None) -> Iterator[Document]:
    """Non-empty documents of a corpus file, read by :mod:`embedforge.corpus` (its text, title and id
    rules); a record without an id is named by its line number, so ids stay stable when lines are added."""
    seen: dict[str, str] = {}
    for record in iter_records(p):
        doc = to_document(record, field=text_field)
        text = doc.full_text
        if not text:
            continue
        doc_id = doc.id if record_id(record)[0] is not None else str(record.line)
        if doc_id in seen:
            raise ValueError(
                f"{record.where}: duplicate document id {doc_id!r} (first at {seen[doc_id]}); "
                "ids key the resumable output"
            )
        seen[doc_id] = record.where
        yield Document(doc_id, text, _language(doc.metadata))


def load_corpus(path: str | Path, *, text_field: str | None = None) -> list[Document]:
    """Documents with non-empty text, in file order, from a corpus file (BEIR ``corpus.jsonl``, JSONL,
    TXT, Parquet, CSV) or a folder of text files. Ids: the record's ``_id``/``id``/``doc_id``, the
    line number when it has none, or a file's path relative to the folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"corpus {str(p)!r} does not exist")
    docs: list[Document] = []
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise ValueError(f"corpus folder {str(p)!r} holds no {'/'.join(TEXT_SUFFIXES)} files")
        for f in files:
            text = f.read_text(encoding="utf-8")
            if text.strip():
                docs.append(Document(f.relative_to(p).as_posix(), text.strip()))
    else:
        docs = list(_file_documents(p, text_field))
    if not docs:
        raise ValueError(f"corpus {str(p)!r} holds no non-empty document")
    return docs


def default_personas_path() -> Path:
    return Path(str(resources.files("embedforge") / "data" / "personas.jsonl"))


def load_personas(path: str | Path | None = None) -> list[str]:
    """The persona library, duplicates removed, order kept; the built-in one when ``path`` is None."""
    p = Path(path) if path is not None else default_personas_path()
    if not p.exists():
        raise FileNotFoundError(f"persona file {str(p)!r} does not exist")
    out: list[str] = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{lineno}: not valid JSON ({e.msg})") from e
                persona = obj.get("persona") if isinstance(obj, dict) else None
                if not isinstance(persona, str):
                    raise ValueError(f'{p}:{lineno}: expected {{"persona": "..."}} (Persona Hub format)')
                line = persona.strip()
            if line:
                out.append(line)
    personas = list(dict.fromkeys(out))
    if len(personas) < 1:
        raise ValueError(f"persona file {str(p)!r} holds no persona")
    return personas
