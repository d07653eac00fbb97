"""Small file helpers every part of embedforge shares: atomic writes, JSONL in and out, text lines.

Each exists once here (issue 9 item 6):

- :func:`atomic_write` writes through a temporary file in the same folder, fsyncs it and renames it
  over the target, so a reader sees the old file or the new one, never a half-written one; the
  temporary file is removed when writing fails.
- :func:`iter_jsonl_lines` reads JSONL line by line (streams any size); a line that is not valid
  UTF-8, not valid JSON, or not a JSON object raises naming the file and line.
- :func:`iter_text_lines` splits a text file on ``"\\n"`` and ``"\\r\\n"`` only — never on form
  feed, U+2028 or the other separators :meth:`str.splitlines` also splits on — so a file of N lines
  gives N rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | Path, *, binary: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        f: IO[Any] = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write one JSON document atomically (UTF-8, unescaped, indented)."""
    with atomic_write(path, binary=False) as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False))


def _decode(raw: bytes, path: str | Path, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start + 1} of the line)") from None
    if lineno == 1 and text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark is not part of the first line
    return text


def iter_lines_with_ends(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its ``\\n``/``\\r\\n`` ending) of a UTF-8 file split on
    ``\\n`` only; a line that is not valid UTF-8 raises naming the file and line. (The csv module
    reads these: its quoted fields may span lines.)"""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):  # binary files split on b"\n" only
            yield lineno, _decode(raw, path, lineno)


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a UTF-8 text file split on ``\\n`` and ``\\r\\n`` only.

    A final newline does not start an extra empty line (as with :meth:`str.splitlines`); form
    feeds, U+2028 and a lone ``\\r`` stay inside their line.
    """
    for lineno, line in iter_lines_with_ends(path):
        if line.endswith("\n"):
            line = line[:-2] if line.endswith("\r\n") else line[:-1]
        yield lineno, line


def iter_jsonl_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a JSONL file, streamed."""
    for lineno, line in iter_text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Every object of a JSONL file (blank lines skipped), streamed."""
    for _, obj in iter_jsonl_lines(path):
        yield obj


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file (blank lines skipped); a bad line raises naming the file and line number."""
    return list(iter_jsonl(path))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write a whole JSONL file atomically (one object a line, UTF-8 unescaped); returns the count."""
    n = 0
    with atomic_write(path, binary=False) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


__all__ = [
    "atomic_write",
    "iter_jsonl",
    "iter_jsonl_lines",
    "iter_lines_with_ends",
    "iter_text_lines",
    "read_jsonl",
    "write_json_atomic",
    "write_jsonl",
]
