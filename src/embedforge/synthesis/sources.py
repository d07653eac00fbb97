"""Inputs of a synthesis run: the corpus (BEIR ``corpus.jsonl``, JSONL with a text field, or a folder of
text files) and the persona library (Persona Hub JSONL ``{"persona": ...}`` or one persona a line).

A JSONL document may carry its language (``"language"`` or ``"lang"``: a code such as ``"zh"`` or a
name); it then overrides the run's corpus language in that document's prompts (multilingual corpora)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from embedforge.evaluation.data import document_text
from embedforge.synthesis.config import language_name
from embedforge.synthesis.store import iter_jsonl_lines

TEXT_FIELDS = ("text", "contents", "content", "passage", "body")
ID_FIELDS = ("_id", "id", "doc_id", "docid")
TEXT_SUFFIXES = (".txt", ".md", ".rst")


LANGUAGE_FIELDS = ("language", "lang")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    language: str | None = (
        None  # the document's own language (a JSONL "language"/"lang" field), else the run's
    )


def _record_text(obj: dict, text_field: str | None, where: str) -> str:
    if text_field is not None:
        if text_field not in obj:
            raise ValueError(f"{where}: no field {text_field!r} (fields: {sorted(obj)})")
        text = obj[text_field]
    else:
        name = next((f for f in TEXT_FIELDS if f in obj), None)
        if name is None:
            raise ValueError(
                f"{where}: no text field; expected one of {list(TEXT_FIELDS)} (fields: {sorted(obj)})"
            )
        text = obj[name]
    if not isinstance(text, str):
        raise ValueError(f"{where}: the text must be a string, got {type(text).__name__}")
    title = obj.get("title")
    # BEIR: title and text together make the passage, joined as everywhere else in embedforge
    return document_text(title if isinstance(title, str) else None, text)


def load_corpus(path: str | Path, *, text_field: str | None = None) -> list[Document]:
    """Documents with non-empty text, in file order. Ids: the record's ``_id``/``id``/``doc_id``, the
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
        for lineno, obj in iter_jsonl_lines(p):
            text = _record_text(obj, text_field, f"{p}:{lineno}")
            if not text.strip():
                continue
            doc_id = next((str(obj[f]) for f in ID_FIELDS if f in obj), str(lineno))
            lang = next(
                (obj[f] for f in LANGUAGE_FIELDS if isinstance(obj.get(f), str) and obj[f].strip()), None
            )
            docs.append(Document(doc_id, text.strip(), language_name(lang) if lang else None))
    ids = [d.id for d in docs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"corpus {str(p)!r} has duplicate document id {dup!r}; ids key the resumable output")
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
