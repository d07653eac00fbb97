"""On-disk cache of embeddings, so reranker runs and dimension sweeps never re-encode a corpus.

An entry is keyed by everything that changes the vectors: the model fingerprint (weights, config,
pooling, max length), the fingerprint of the exact texts encoded, the prompt put before them, the
max length and the pooling. A changed model or changed data gives a new key, so a stale entry is
never read. Entries are written in chunks, each atomically, so an interrupted encoding resumes
where it stopped; the finished entry is one ``embeddings.npy`` read back memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from embedforge.evaluation.data import texts_fingerprint

ENTRY_VERSION = 1


@dataclass(frozen=True)
class CacheKey:
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
    """Embeddings read from or written to the cache, with what it cost."""

    embeddings: np.ndarray  # (n_texts, dim) float32
    cache_hit: bool
    encode_seconds: float  # 0.0 on a full cache hit
    path: Path | None


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


class EmbeddingCache:
    """A directory of cache entries, one sub-directory per :class:`CacheKey` digest."""

    def __init__(self, root: str | Path, *, chunk_size: int = 1024) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.root = Path(root)
        self.chunk_size = chunk_size

    def entry_dir(self, key: CacheKey) -> Path:
        return self.root / key.digest()

    def load(self, key: CacheKey) -> np.ndarray | None:
        """The finished embeddings of ``key`` (memory-mapped), or ``None``."""
        path = self.entry_dir(key) / "embeddings.npy"
        return np.load(path, mmap_mode="c") if path.is_file() else None

    def get_or_encode(
        self,
        key: CacheKey,
        texts: Sequence[str],
        encode: Callable[[Sequence[str]], np.ndarray],
        *,
        desc: str = "encode",
        show_progress: bool = True,
    ) -> Encoded:
        """Return the cached embeddings of ``texts`` or encode the missing chunks and store them."""
        if texts_fingerprint(texts) != key.data_fingerprint:
            raise ValueError("the key's data_fingerprint does not match the texts being encoded")
        entry = self.entry_dir(key)
        final = entry / "embeddings.npy"
        if final.is_file():
            emb = np.load(final, mmap_mode="c")
            if emb.shape[0] != len(texts):
                raise ValueError(
                    f"cache entry {entry} holds {emb.shape[0]} rows for {len(texts)} texts; delete it"
                )
            return Encoded(emb, True, 0.0, final)
        entry.mkdir(parents=True, exist_ok=True)
        meta = {
            "key": asdict(key),
            "n_texts": len(texts),
            "chunk_size": self.chunk_size,
            "version": ENTRY_VERSION,
        }
        meta_path = entry / "meta.json"
        if (
            meta_path.is_file()
            and json.loads(meta_path.read_text(encoding="utf-8")).get("chunk_size") != self.chunk_size
        ):
            shutil.rmtree(entry)  # written with another chunking: its parts cannot be reused
            entry.mkdir(parents=True)
        _write_json_atomic(meta_path, meta)
        n_chunks = max(1, -(-len(texts) // self.chunk_size))
        seconds = 0.0
        bar = tqdm(total=len(texts), desc=desc, unit="text", disable=not show_progress)
        for c in range(n_chunks):
            part = entry / f"part-{c:06d}.npy"
            lo, hi = c * self.chunk_size, min(len(texts), (c + 1) * self.chunk_size)
            if not part.is_file():  # resume: chunks already written are kept
                t0 = time.perf_counter()
                vecs = np.asarray(encode(texts[lo:hi]), dtype=np.float32)  # (hi - lo, dim)
                seconds += time.perf_counter() - t0
                if vecs.ndim != 2 or vecs.shape[0] != hi - lo:
                    raise ValueError(f"encoder returned shape {vecs.shape} for {hi - lo} texts")
                _save_atomic(part, vecs)
            bar.update(hi - lo)
        bar.close()
        parts = [np.load(entry / f"part-{c:06d}.npy", mmap_mode="c") for c in range(n_chunks)]
        dim = parts[0].shape[1] if len(texts) else 0
        tmp = entry / f"embeddings.npy.tmp-{os.getpid()}"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), dim))
        row = 0
        for p in parts:
            out[row : row + p.shape[0]] = p
            row += p.shape[0]
        out.flush()
        del out, parts
        os.replace(tmp, final)
        for c in range(n_chunks):
            (entry / f"part-{c:06d}.npy").unlink(missing_ok=True)
        return Encoded(np.load(final, mmap_mode="c"), False, seconds, final)


def cached_encode(
    cache: EmbeddingCache | None,
    *,
    model_fingerprint: str,
    max_length: int,
    pooling: str,
    texts: Sequence[str],
    prompt: str,
    encode: Callable[[Sequence[str]], np.ndarray],
    desc: str,
    show_progress: bool = True,
) -> Encoded:
    """Encode through ``cache`` when one is given, directly otherwise."""
    if cache is None:
        t0 = time.perf_counter()
        emb = np.asarray(encode(texts), dtype=np.float32)
        return Encoded(emb, False, time.perf_counter() - t0, None)
    key = CacheKey(model_fingerprint, texts_fingerprint(texts), prompt, max_length, pooling)
    return cache.get_or_encode(key, texts, encode, desc=desc, show_progress=show_progress)
