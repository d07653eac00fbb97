"""A corpus cut into parts, each read on its own with the corpus reader's rules; committed output parts.

Ray-free on purpose: the planner, the part reader and the output manifest are plain functions and
dataclasses, so the distributed job only schedules them, and tests check them without a cluster.

- :func:`plan_parts` cuts a corpus file into parts of about ``part_rows`` records in file order, with
  what a worker needs to read one part without reading the file before it: a byte range (JSONL,
  TXT) or a list of row groups (Parquet), and the part's first row number (a record without an id
  gets its row number, as in :mod:`embedforge.corpus`).
- :func:`read_part` turns a part into :class:`~embedforge.corpus.Document` objects through
  :func:`embedforge.corpus.to_document`, so ids, title+text joining, metadata and error messages
  (file and line) are those of the single-process reader.
- :class:`PartsManifest` is the record of committed parts of a job's output: ``manifest.json``
  (the settings, written once) and ``committed.jsonl`` (one line appended and fsync'ed per finished
  part, so a commit costs the same at part 10 and at part 100,000); a restarted job skips them. :func:`merge_parts` writes the final ``.parquet``
  or ``.npy`` from the parts, in corpus order, streaming.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedforge.corpus import Document, Record, iter_documents, iter_records, record_id, to_document
from embedforge.fileio import _decode, atomic_write, write_json_atomic

RAY_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")
MANIFEST = "manifest.json"
COMMITS = "committed.jsonl"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class PartSpec:
    """One part of a corpus file: ``rows`` records from row ``first_row`` (0-based, file order)."""

    index: int
    first_row: int
    rows: int
    start_byte: int = 0  # JSONL / TXT: the byte range holding the part's lines
    end_byte: int = 0
    first_line: int = 1  # JSONL / TXT: 1-based line number at start_byte
    row_groups: tuple[int, ...] = ()  # Parquet: the row groups of the part


def check_ray_input(path: str | Path) -> Path:
    """The corpus file, refused with a clear message when the distributed reader cannot cut it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"corpus file {str(p)!r} does not exist")
    if p.suffix.lower() not in RAY_SUFFIXES:
        raise ValueError(
            f"--engine ray reads {', '.join(RAY_SUFFIXES)} files, got {str(p)!r}; "
            "convert it (e.g. to .jsonl) or use --engine local"
        )
    return p


def _line_parts(p: Path, part_rows: int, jsonl: bool) -> list[PartSpec]:
    """Scan the file's bytes once: a row is a line (TXT) or a non-blank line (JSONL)."""
    parts: list[PartSpec] = []
    row = first_row = 0
    offset = start = 0
    lineno = 0
    first_line = 1
    with open(p, "rb") as f:
        for raw in f:  # binary iteration splits on b"\n" only, as fileio does
            lineno += 1
            if jsonl:
                # blank by the reader's rule (str.strip after decoding); undecodable lines are rows
                # so that the part reader raises the reader's own error for them
                text = raw.decode("utf-8", errors="replace")
                if lineno == 1:
                    text = text.removeprefix("\ufeff")
                is_row = bool(text.strip())
            else:
                is_row = True
            offset += len(raw)
            if is_row:
                row += 1
            if row - first_row == part_rows:
                parts.append(PartSpec(len(parts), first_row, row - first_row, start, offset, first_line))
                first_row, start, first_line = row, offset, lineno + 1
    if row > first_row:
        parts.append(PartSpec(len(parts), first_row, row - first_row, start, offset, first_line))
    return parts


def _parquet_parts(p: Path, part_rows: int) -> list[PartSpec]:
    """Whole row groups, gathered until a part holds at least ``part_rows`` rows."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(p).metadata
    parts: list[PartSpec] = []
    groups: list[int] = []
    rows = first_row = 0
    for g in range(meta.num_row_groups):
        groups.append(g)
        rows += meta.row_group(g).num_rows
        if rows >= part_rows:
            parts.append(PartSpec(len(parts), first_row, rows, row_groups=tuple(groups)))
            first_row, rows, groups = first_row + rows, 0, []
    if groups and rows:
        parts.append(PartSpec(len(parts), first_row, rows, row_groups=tuple(groups)))
    return parts


def plan_parts(path: str | Path, part_rows: int) -> list[PartSpec]:
    """Cut a corpus file into parts of ``part_rows`` records (Parquet: whole row groups) in file order."""
    if part_rows < 1:
        raise ValueError(f"part_rows must be >= 1, got {part_rows}")
    p = check_ray_input(path)
    if p.suffix.lower() == ".parquet":
        return _parquet_parts(p, part_rows)
    return _line_parts(p, part_rows, jsonl=p.suffix.lower() != ".txt")


def _split_on_newline(data: bytes) -> Iterator[bytes]:
    """Lines with their ``\\n`` split on ``b"\\n"`` only, as iterating a binary file does."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end + 1
        yield data[start:end]
        start = end


def _part_records(p: Path, part: PartSpec) -> Iterator[Record]:
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(p).read_row_groups(list(part.row_groups))
        for i, fields in enumerate(table.to_pylist()):
            row = part.first_row + i
            yield Record(f"{p}: row {row + 1}", row, row + 1, fields)
        return
    row = part.first_row
    with open(p, "rb") as f:
        f.seek(part.start_byte)
        data = f.read(part.end_byte - part.start_byte)
    for n, raw in enumerate(_split_on_newline(data)):
        lineno = part.first_line + n
        line = _decode(raw, p, lineno)
        if line.endswith("\n"):
            line = line[:-2] if line.endswith("\r\n") else line[:-1]
        if suffix == ".txt":
            yield Record(f"{p}:{lineno}", row, lineno, {"text": line})
            row += 1
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield Record(f"{p}:{lineno}", row, lineno, obj)
        row += 1


def read_part(
    path: str | Path, part: PartSpec, *, field: str | None = None, id_field: str | None = None
) -> list[Document]:
    """The documents of one part, by the rules of :func:`embedforge.corpus.iter_documents`."""
    p = Path(path)
    title_field: str | None = "title"
    if p.suffix.lower() == ".txt":
        field, title_field = None, None  # a TXT line is the text, whatever the options say
    docs = [
        to_document(r, field=field, id_field=id_field, title_field=title_field)
        for r in _part_records(p, part)
    ]
    if len(docs) != part.rows:
        raise ValueError(
            f"{p}: part {part.index} holds {len(docs)} records where the plan counted {part.rows}; "
            "the file changed while the job ran"
        )
    return docs


def corpus_has_ids(path: str | Path) -> bool:
    """Whether ``embed`` writes the corpus ids (else row numbers): textio.read_texts' rule."""
    p = Path(path)
    first = next(iter_records(p), None)
    return first is not None and p.suffix.lower() != ".txt" and record_id(first)[0] is not None


# ---------------------------------------------------------------------- committed output parts
def parts_dir_of(output: str | Path) -> Path:
    """Where a job writes its committed parts: ``OUT.parquet`` -> ``OUT.parquet.parts/``."""
    out = Path(output)
    return out.with_name(out.name + ".parts")


def input_identity(path: str | Path) -> dict[str, Any]:
    """What says "the same input file": absolute path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class PartsManifest:
    """The committed parts of one job's output; a part is listed only once all its files are written."""

    settings: dict[str, Any]  # everything that changes the vectors, and the input's identity
    parts_total: int
    done: dict[str, list[str]] = field(default_factory=dict)  # part index -> its block files
    version: int = MANIFEST_VERSION

    def is_done(self, index: int) -> bool:
        return str(index) in self.done

    def commit(self, folder: Path, index: int, files: Sequence[str]) -> None:
        """Record part ``index`` as finished: one line appended to ``committed.jsonl`` and fsync'ed."""
        self.done[str(index)] = sorted(files)
        line = json.dumps({"part": index, "files": sorted(files)}) + "\n"
        fd = os.open(folder / COMMITS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_commits(path: Path) -> dict[str, list[str]]:
    """The committed parts; a last line without its newline (a torn append) is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with open(path, "rb+") as f:
            f.truncate(keep)
    done: dict[str, list[str]] = {}
    for n, raw in enumerate(data[:keep].splitlines(), start=1):
        try:
            row = json.loads(raw)
            done[str(int(row["part"]))] = [str(x) for x in row["files"]]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{path}:{n}: not a commit line ({e}); delete the folder to start again"
            ) from None
    return done


def open_manifest(folder: Path, settings: dict[str, Any], parts_total: int) -> PartsManifest:
    """The manifest of ``folder`` (a new one when absent); refuses one written with other settings."""
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".*.tmp"):  # blocks whose writer was killed before the rename
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    path = folder / MANIFEST
    if not path.exists():
        (folder / COMMITS).unlink(missing_ok=True)  # commits without their settings are not ours
        manifest = PartsManifest(settings, parts_total)
        write_json_atomic(path, {k: v for k, v in asdict(manifest).items() if k != "done"})
        return manifest
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = PartsManifest(**data)
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(
            f"{path}: not a parts manifest ({e}); delete {str(folder)!r} to start again"
        ) from None
    if manifest.version != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {manifest.version}, expected {MANIFEST_VERSION}")
    if manifest.settings != settings or manifest.parts_total != parts_total:
        diff = {
            k: (manifest.settings.get(k), settings.get(k))
            for k in sorted(set(manifest.settings) | set(settings))
            if manifest.settings.get(k) != settings.get(k)
        }
        raise ValueError(
            f"{str(folder)!r} holds the parts of a job with other settings or input {diff}: "
            "resume with the same input and options, or delete that folder to start again"
        )
    manifest.done = _read_commits(folder / COMMITS)
    return manifest


def block_name(part: int, first_row: int) -> str:
    return f"part-{part:06d}-{first_row:012d}.parquet"


def write_block(folder: Path, part: int, first_row: int, ids: Sequence[str], vectors: np.ndarray) -> str:
    """Write one block of a part atomically (``id`` + ``embedding``); the same block written twice
    (a retried task) replaces the first copy, so each document is stored once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (n, dim)
    col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
    name = block_name(part, first_row)
    with atomic_write(folder / name) as f:
        pq.write_table(pa.table({"id": list(ids), "embedding": col}), f)
    return name


def read_block(folder: Path, name: str) -> tuple[list[str], np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(folder / name)
    emb = table.column("embedding").combine_chunks()
    width = emb.type.list_size
    vectors = emb.values.to_numpy(zero_copy_only=False).reshape(-1, width)  # (n, dim)
    return table.column("id").to_pylist(), vectors


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of each id (blake2b), for the duplicate check of a merge: 8 bytes per document
    whatever the ids' length, where a set of the ids themselves would hold every string."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little") for i in ids],
        dtype=np.uint64,
    )


def _check_unique(hashes: np.ndarray, corpus: Path, field: str | None, id_field: str | None) -> None:
    """Raise the corpus reader's own error (the id, its file and both lines) when two ids share a
    hash and really repeat; equal hashes of different ids (about 1 in 10^8 at 10^6 documents) pass."""
    ordered = np.sort(hashes, kind="stable")
    if not (ordered[1:] == ordered[:-1]).any():
        return
    for _ in iter_documents(corpus, field=field, id_field=id_field):  # raises on a repeated id
        pass


@dataclass(frozen=True)
class MergeResult:
    rows: int
    dim: int
    output: Path


def merge_parts(
    folder: Path,
    manifest: PartsManifest,
    parts: Sequence[PartSpec],
    output: str | Path,
    *,
    corpus: Path,
    with_ids: bool,
    field: str | None = None,
    id_field: str | None = None,
) -> MergeResult:
    """Write the final ``.parquet`` (``id`` + ``embedding``) or ``.npy`` from the committed parts, in
    corpus order, part by part; ids must be unique across the corpus (the reader's rule), checked
    on 64-bit hashes (8 bytes per document in memory) before the output replaces anything."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(output)
    hashes = np.empty(sum(p.rows for p in parts), dtype=np.uint64)  # (n,): the ids, checked at the end
    rows = dim = 0
    npy = out.suffix == ".npy"
    tmp = out.with_name(f".{out.name}.merge.tmp")
    writer: Any = None
    matrix: Any = None
    try:
        if npy:
            width = read_block(folder, manifest.done[str(parts[0].index)][0])[1].shape[1] if parts else 0
            total = sum(p.rows for p in parts)
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, width))
        for part in parts:
            got = 0
            for name in manifest.done[str(part.index)]:  # sorted by first row
                ids, vectors = read_block(folder, name)
                start = part.first_row + got
                hashes[start : start + len(ids)] = id_hashes(ids)
                got += len(ids)
                dim = vectors.shape[1]
                if npy:
                    matrix[start : start + len(ids)] = vectors
                    continue
                if not with_ids:
                    ids = [str(i) for i in range(start, start + len(ids))]
                col = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
                table = pa.table({"id": ids, "embedding": col})
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            if got != part.rows:
                raise ValueError(f"{folder}: part {part.index} holds {got} rows, expected {part.rows}")
            rows += got
        if matrix is not None:
            matrix.flush()
            del matrix
            matrix = None
        if writer is not None:
            writer.close()
            writer = None
        if not npy and rows == 0:
            raise ValueError(f"{corpus} holds no documents")
        _check_unique(hashes, corpus, field, id_field)
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return MergeResult(rows=rows, dim=dim, output=out)
