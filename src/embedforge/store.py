"""The embedding store: one on-disk home for encoded texts, shared by evaluation, ``embed`` and the index.

An entry is keyed by everything that changes the vectors (:class:`StoreKey`): the model fingerprint
(weights, config, pooling, max length), the fingerprint of the exact texts encoded, the prompt put
before them, the max length and the pooling. A changed model or changed data gives a new key, so a
stale entry is never read.

Guarantees of an entry (one sub-directory per key digest):

- **Resumable**: texts are encoded ``chunk_size`` at a time; each chunk is written atomically as a
  part file, so an interrupted run resumes at the first missing part.
- **Checksummed**: ``meta.json`` (the manifest, rewritten atomically) records each part's row count,
  width, byte size and sha256, and the same for the final ``embeddings.npy``. Everything is checked
  on load — size, checksum, shape, dtype and finiteness — and a part or final array that fails (bit
  flips, NaN rows, a zeroed, short, truncated or empty file) is deleted and re-encoded with a
  :class:`StoreWarning` naming the file. A part is merged only once verified, so a short chunk can
  never reach the final array.
- **Locked**: the entry is written under an exclusive ``flock`` on ``entry/lock``; a second process
  encoding the same entry waits, then reuses what the first one wrote.
- **Memory-mapped**: the finished entry is one ``embeddings.npy`` read back with ``mmap_mode="c"``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from embedforge.fileio import atomic_write, write_json_atomic

ENTRY_VERSION = 2  # 2: checksummed manifest in meta.json
FINAL = "embeddings.npy"
META = "meta.json"
LOCK = "lock"
_FINITE_BLOCK_ROWS = 65536

log = logging.getLogger(__name__)


class StoreWarning(UserWarning):
    """A stored part or array failed verification and is being re-encoded."""


class Progress(Protocol):
    """What an encode function may advance: a tqdm bar or anything with ``update(n)``."""

    def update(self, n: int = 1) -> Any: ...


EncodeFn = Callable[..., np.ndarray]  # encode(texts) or, with encode_takes_progress, encode(texts, progress)


def texts_fingerprint(texts: Iterable[str]) -> str:
    """A stable sha256 of a sequence of texts (order matters); the data half of a :class:`StoreKey`."""
    h = hashlib.sha256()
    n = 0
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))  # length prefix: ["ab", "c"] != ["a", "bc"]
        h.update(b)
        n += 1
    h.update(n.to_bytes(8, "little"))
    return h.hexdigest()


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class StoreKey:
    """Everything that determines a set of embeddings."""

    model_fingerprint: str
    data_fingerprint: str
    prompt: str
    max_length: int
    pooling: str

    def digest(self) -> str:
        payload = json.dumps({"v": ENTRY_VERSION, **asdict(self)}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class Encoded:
    """Embeddings read from or written to the store, with what they cost."""

    embeddings: np.ndarray  # (n_texts, dim) float32
    cache_hit: bool
    encode_seconds: float  # 0.0 on a full hit
    path: Path | None


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; the lock file is removed on release.

    Removing it is safe because a waiter checks, once it holds the lock, that the file it locked is
    still the one at ``path`` (same inode) and starts over otherwise.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process writing %s", path.parent)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still locked: a waiter sees a new inode and retries
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _record(path: Path, array: np.ndarray) -> dict[str, Any]:
    return {
        "rows": int(array.shape[0]),
        "dim": int(array.shape[1]),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def _all_finite(array: np.ndarray) -> bool:
    for lo in range(0, array.shape[0], _FINITE_BLOCK_ROWS):  # bounded memory on a memory map
        if not np.isfinite(array[lo : lo + _FINITE_BLOCK_ROWS]).all():
            return False
    return True


def verify_array(path: Path, record: dict[str, Any] | None, rows: int) -> tuple[np.ndarray | None, str]:
    """(memory-mapped array, "") when ``path`` matches its ``record`` and holds ``rows`` finite rows,
    else (None, why not)."""
    if record is None:
        return None, "no checksum record in the manifest"
    size = path.stat().st_size
    if size != record.get("bytes"):
        return None, f"{size} bytes where {record.get('bytes')} were written (truncated or damaged)"
    if sha256_file(path) != record.get("sha256"):
        return None, "checksum mismatch (the bytes changed since they were written)"
    try:
        array = np.load(path, mmap_mode="c")
    except (ValueError, OSError, EOFError) as e:  # cannot happen with a matching checksum, but never trace
        return None, f"unreadable ({e})"
    if array.dtype != np.float32 or array.ndim != 2 or array.shape != (rows, record.get("dim")):
        return None, f"holds {array.dtype} {array.shape} where ({rows}, {record.get('dim')}) float32 is due"
    if record.get("rows") != rows:
        return None, f"the manifest records {record.get('rows')} rows where {rows} are due"
    if not _all_finite(array):
        return None, "holds NaN or infinite values"
    return array, ""


class EmbeddingStore:
    """A directory of entries, one sub-directory per :class:`StoreKey` digest."""

    def __init__(self, root: str | Path, *, chunk_size: int = 1024) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.root = Path(root)
        self.chunk_size = chunk_size

    def entry_dir(self, key: StoreKey) -> Path:
        return self.root / key.digest()

    # ------------------------------------------------------------------ manifest
    def _fresh_meta(self, key: StoreKey, n: int) -> dict[str, Any]:
        return {
            "key": asdict(key),
            "n_texts": n,
            "chunk_size": self.chunk_size,
            "version": ENTRY_VERSION,
            "parts": {},
            "final": None,
        }

    def _read_meta(self, entry: Path, key: StoreKey, n: int) -> dict[str, Any] | None:
        """The entry's manifest when it belongs to this key, size and chunking; else None."""
        try:
            meta = json.loads((entry / META).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None
        fresh = self._fresh_meta(key, n)
        same = isinstance(meta, dict) and all(
            meta.get(k) == fresh[k] for k in ("key", "n_texts", "chunk_size", "version")
        )
        return meta if same and isinstance(meta.get("parts"), dict) else None

    @staticmethod
    def _clear(entry: Path, keep: Sequence[str] = (LOCK,)) -> None:
        for p in entry.iterdir():
            if p.name not in keep and p.is_file():
                p.unlink()

    @staticmethod
    def _damaged(path: Path, why: str) -> None:
        warnings.warn(
            f"embedding store: {path}: {why}; discarded (it is re-encoded when next needed)",
            StoreWarning,
            stacklevel=4,
        )
        path.unlink(missing_ok=True)

    def _verified_final(self, entry: Path, meta: dict[str, Any], n: int) -> np.ndarray | None:
        final = entry / FINAL
        if not final.is_file():
            return None
        array, why = verify_array(final, meta.get("final"), n)
        if array is None:
            self._damaged(final, why)
            meta["final"] = None
        return array

    # ------------------------------------------------------------------ reading
    def load(self, key: StoreKey, n_texts: int) -> np.ndarray | None:
        """The verified embeddings of ``key`` (memory-mapped), or ``None`` (absent or damaged)."""
        entry = self.entry_dir(key)
        if not (entry / FINAL).is_file():
            return None
        with entry_lock(entry / LOCK):
            meta = self._read_meta(entry, key, n_texts)
            return None if meta is None else self._verified_final(entry, meta, n_texts)

    # ------------------------------------------------------------------ writing
    def get_or_encode(
        self,
        key: StoreKey,
        texts: Sequence[str],
        encode: EncodeFn,
        *,
        desc: str = "encode",
        show_progress: bool = True,
        encode_takes_progress: bool = False,
    ) -> Encoded:
        """The stored embeddings of ``texts``, encoding and storing whatever is missing or damaged.

        ``encode(texts) -> (len(texts), dim)`` float array; with ``encode_takes_progress`` it is
        called as ``encode(texts, progress)`` and advances ``progress`` per batch it encodes, so the
        bar moves per batch rather than per chunk.
        """
        if texts_fingerprint(texts) != key.data_fingerprint:
            raise ValueError("the key's data_fingerprint does not match the texts being encoded")
        n = len(texts)
        if n == 0:
            return _encode_uncached(texts, encode, desc, show_progress, encode_takes_progress)
        entry = self.entry_dir(key)
        entry.mkdir(parents=True, exist_ok=True)
        with entry_lock(entry / LOCK):
            for tmp in entry.glob(".*.tmp"):  # left by a writer that was killed mid-write
                tmp.unlink(missing_ok=True)
            meta = self._read_meta(entry, key, n)
            if meta is None:  # new entry, or written for another chunking/version: start over
                self._clear(entry)
                meta = self._fresh_meta(key, n)
                write_json_atomic(entry / META, meta)
            emb = self._verified_final(entry, meta, n)
            if emb is not None:
                for part in entry.glob("part-*.npy"):  # orphans of a run killed after the merge
                    part.unlink(missing_ok=True)
                return Encoded(emb, True, 0.0, entry / FINAL)
            seconds = self._encode_parts(
                entry, meta, texts, encode, desc, show_progress, encode_takes_progress
            )
            self._merge(entry, meta, n)
        return Encoded(np.load(entry / FINAL, mmap_mode="c"), False, seconds, entry / FINAL)

    def _encode_parts(
        self,
        entry: Path,
        meta: dict[str, Any],
        texts: Sequence[str],
        encode: EncodeFn,
        desc: str,
        show_progress: bool,
        takes_progress: bool,
    ) -> float:
        n, size = len(texts), self.chunk_size
        seconds = 0.0
        dim: int | None = None
        with tqdm(total=n, desc=desc, unit="text", disable=not show_progress) as bar:
            for c in range(-(-n // size)):
                name, lo, hi = f"part-{c:06d}.npy", c * size, min(n, (c + 1) * size)
                part = entry / name
                if part.is_file():  # resume: a verified part is kept, a damaged one re-encoded
                    array, why = verify_array(part, meta["parts"].get(name), hi - lo)
                    if array is not None and dim not in (None, array.shape[1]):
                        why = f"{array.shape[1]} columns where the other parts have {dim}"
                        array = None
                    if array is not None:
                        dim = int(array.shape[1])
                        bar.update(hi - lo)
                        continue
                    self._damaged(part, why)
                meta["parts"].pop(name, None)
                counted = _Counted(bar)
                t0 = time.perf_counter()
                out = encode(texts[lo:hi], counted) if takes_progress else encode(texts[lo:hi])
                vecs = np.asarray(out, dtype=np.float32)  # (hi - lo, dim)
                seconds += time.perf_counter() - t0
                _check_encoded(vecs, lo, hi, dim)
                dim = int(vecs.shape[1])
                with atomic_write(part) as f:
                    np.save(f, vecs)
                meta["parts"][name] = _record(part, vecs)
                write_json_atomic(entry / META, meta)
                bar.update(max(0, hi - lo - counted.n))
        return seconds

    def _merge(self, entry: Path, meta: dict[str, Any], n: int) -> None:
        """Copy the verified parts into one ``embeddings.npy``, record it, then drop the parts."""
        names = [f"part-{c:06d}.npy" for c in range(-(-n // self.chunk_size))]
        dim = int(meta["parts"][names[0]]["dim"])
        final = entry / FINAL
        with atomic_write(final) as f:
            np.lib.format.write_array_header_1_0(
                f,
                {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                    "fortran_order": False,
                    "shape": (n, dim),
                },
            )
            for c, name in enumerate(names):
                lo, hi = c * self.chunk_size, min(n, (c + 1) * self.chunk_size)
                array, why = verify_array(entry / name, meta["parts"].get(name), hi - lo)
                if array is None or array.shape[1] != dim:  # never merge a part that does not verify
                    raise RuntimeError(f"embedding store: {entry / name} changed during the run: {why}")
                f.write(np.ascontiguousarray(array).tobytes())
        merged = np.load(final, mmap_mode="r")
        meta["final"] = _record(final, merged)
        del merged
        meta["parts"] = {}
        write_json_atomic(entry / META, meta)
        for name in names:
            (entry / name).unlink(missing_ok=True)


class _Counted:
    """Forwards ``update`` to a bar and counts the rows reported."""

    def __init__(self, bar: Progress) -> None:
        self.bar, self.n = bar, 0

    def update(self, n: int = 1) -> None:
        self.n += n
        self.bar.update(n)


def _check_encoded(vecs: np.ndarray, lo: int, hi: int, dim: int | None) -> None:
    if vecs.ndim != 2 or vecs.shape[0] != hi - lo:
        raise ValueError(f"encoder returned shape {vecs.shape} for {hi - lo} texts")
    if dim is not None and vecs.shape[1] != dim:
        raise ValueError(f"encoder returned {vecs.shape[1]} columns for texts {lo}..{hi - 1}, earlier {dim}")
    if not _all_finite(vecs):
        bad = int(np.flatnonzero(~np.isfinite(vecs).all(axis=1))[0]) + lo
        raise ValueError(f"encoder returned NaN or infinite values (first at text {bad}); nothing was stored")


def _encode_uncached(
    texts: Sequence[str], encode: EncodeFn, desc: str, show_progress: bool, takes_progress: bool
) -> Encoded:
    t0 = time.perf_counter()
    if takes_progress:
        with tqdm(total=len(texts), desc=desc, unit="text", disable=not show_progress) as bar:
            out = encode(texts, bar)
    else:
        out = encode(texts)
    return Encoded(np.asarray(out, dtype=np.float32), False, time.perf_counter() - t0, None)


def cached_encode(
    store: EmbeddingStore | None,
    *,
    model_fingerprint: str,
    max_length: int,
    pooling: str,
    texts: Sequence[str],
    prompt: str,
    encode: EncodeFn,
    desc: str,
    show_progress: bool = True,
    encode_takes_progress: bool = False,
) -> Encoded:
    """Encode through ``store`` when one is given, directly otherwise."""
    if store is None:
        return _encode_uncached(texts, encode, desc, show_progress, encode_takes_progress)
    key = StoreKey(model_fingerprint, texts_fingerprint(texts), prompt, max_length, pooling)
    return store.get_or_encode(
        key,
        texts,
        encode,
        desc=desc,
        show_progress=show_progress,
        encode_takes_progress=encode_takes_progress,
    )


__all__ = [
    "EmbeddingStore",
    "Encoded",
    "Progress",
    "StoreKey",
    "StoreWarning",
    "cached_encode",
    "entry_lock",
    "sha256_file",
    "texts_fingerprint",
    "verify_array",
]
