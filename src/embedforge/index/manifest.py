"""What built an index, on disk as JSON next to the LanceDB table.

``DIR/manifest.json`` exists only once a build has finished; while a build runs,
``DIR/build.json`` holds the same settings, so a killed build can be resumed with the same model
and refused with another. Both are written atomically (temporary file, fsync, rename), so a
reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

FORMAT = "embedforge-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUILD_STATE = "build.json"
TABLE_DIR = "lance"
TABLE = "documents"
RESERVED_COLUMNS = ("id", "text", "title", "vector", "content_hash")


class IndexStateError(ValueError):
    """The directory is not a usable index (missing, foreign, unfinished or built by another model)."""


@dataclass
class Manifest:
    """Settings of an index: every one of them must match for a query to be encoded correctly."""

    model: str  # path or Hub id of the embedder
    fingerprint: str  # Embedder.fingerprint: config, weights, pooling, normalisation, max length, prompts
    dim: int  # stored vector width (the model's, or a Matryoshka truncation)
    hidden_size: int
    max_length: int
    pooling: str
    normalize: bool
    query_prompt: str  # the default query prompt (no instruction)
    document_prompt: str
    spec: dict[str, Any] = field(default_factory=dict)  # what loads the model again
    metric: str = "dot"  # cosine for normalised embeddings
    text_field: str | None = None
    id_field: str | None = None
    metadata_columns: list[str] = field(default_factory=list)
    batch_size: int = 4096
    quantization: str | None = None  # None | "int8" | "binary"
    int8_ranges: list[list[float]] | None = None  # (2, dim): per-dimension min and max (int8 only)
    ann: dict[str, Any] | None = None  # {"type": "IVF_PQ", ...} once `optimize --ann` ran
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def settings_key(self) -> dict[str, Any]:
        """The settings a resumed build must share with the interrupted one."""
        return {
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "text_field": self.text_field,
            "id_field": self.id_field,
            "batch_size": self.batch_size,
            "document_prompt": self.document_prompt,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Manifest:
        if data.get("format") != FORMAT:
            raise IndexStateError(
                f"{where} is not an embedforge index manifest (format {data.get('format')!r})"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexStateError(
                f"{where}: index format version {data.get('format_version')!r} is not supported "
                f"(this embedforge reads version {FORMAT_VERSION})"
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON so that a crash leaves either the previous file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IndexStateError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise IndexStateError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return Manifest.from_dict(data, str(path))


def read_manifest(index_dir: Path) -> Manifest:
    """The manifest of a finished index; a clear error for a missing, foreign or unfinished one."""
    if not index_dir.exists():
        raise IndexStateError(f"index directory {str(index_dir)!r} does not exist")
    if not index_dir.is_dir():
        raise IndexStateError(f"{str(index_dir)!r} is a file, not an index directory")
    path = index_dir / MANIFEST
    if path.is_file():
        return _read(path)
    if (index_dir / BUILD_STATE).is_file():
        raise IndexStateError(
            f"{str(index_dir)!r} holds an unfinished build: run `embedforge index build` again with the "
            "same corpus and model to resume it"
        )
    raise IndexStateError(
        f"{str(index_dir)!r} is not an embedforge index (no {MANIFEST}); build one with `embedforge index build`"
    )


def read_build_state(index_dir: Path) -> Manifest | None:
    path = index_dir / BUILD_STATE
    return _read(path) if path.is_file() else None


def check_empty_or_ours(index_dir: Path) -> None:
    """Refuse to build into a directory that holds something other than an embedforge index."""
    if not index_dir.exists():
        return
    if not index_dir.is_dir():
        raise IndexStateError(f"{str(index_dir)!r} is a file, not a directory")
    foreign = sorted(p.name for p in index_dir.iterdir() if p.name not in (MANIFEST, BUILD_STATE, TABLE_DIR))
    if foreign and not (index_dir / MANIFEST).exists() and not (index_dir / BUILD_STATE).exists():
        raise IndexStateError(
            f"{str(index_dir)!r} is not empty and not an embedforge index (holds {foreign[:5]}); "
            "choose a new directory"
        )
