"""The embedding store under damage and concurrency: every damaged file is found and re-encoded,
a short chunk never reaches the final array, and two processes share one entry safely."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from embedforge import store as store_module
from embedforge.store import (
    EmbeddingStore,
    StoreKey,
    StoreWarning,
    cached_encode,
    texts_fingerprint,
    verify_array,
)

TEXTS = [f"text number {i}" for i in range(10)]


def vectors(texts):
    """Deterministic (n, 4) vectors from the texts."""
    return np.array([[len(t), sum(map(ord, t)) % 97, t.count("1"), 1.0] for t in texts], np.float32)


REFERENCE = vectors(TEXTS)


class Encoder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.encoded: list[str] = []
        self.fail_on = fail_on

    def __call__(self, texts):
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("interrupted")
        self.encoded.extend(texts)
        return vectors(texts)


def key(texts=TEXTS) -> StoreKey:
    return StoreKey("model", texts_fingerprint(texts), "", 64, "mean")


def run(store, enc, texts=TEXTS):
    return store.get_or_encode(key(texts), texts, enc, show_progress=False)


def interrupted(tmp_path):
    """A store with parts 0 and 1 written (chunk 4) and part 2 missing."""
    store = EmbeddingStore(tmp_path, chunk_size=4)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(store, Encoder(fail_on=TEXTS[9]))
    return store, store.entry_dir(key())


def finished(tmp_path):
    store = EmbeddingStore(tmp_path, chunk_size=4)
    run(store, Encoder())
    return store, store.entry_dir(key()) / "embeddings.npy"


# ---------------------------------------------------------------- damaged final array
def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in (-1, -7, -40):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def nan_rows(path: Path) -> None:
    arr = np.load(path, mmap_mode="r+")
    arr[2:4] = np.nan
    arr.flush()
    del arr


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def zero(path: Path) -> None:
    path.write_bytes(b"\x00" * path.stat().st_size)


def short(path: Path) -> None:
    arr = np.load(path)
    np.save(path, arr[:-1])  # a valid .npy file, one row short


@pytest.mark.parametrize("damage", [flip_bytes, nan_rows, truncate, empty, zero, short])
def test_damaged_final_array_is_re_encoded(tmp_path, damage):
    store, final = finished(tmp_path)
    damage(final)
    enc = Encoder()
    with pytest.warns(StoreWarning, match=rf"{final.name}: "):
        out = run(store, enc)
    assert not out.cache_hit and enc.encoded == TEXTS  # everything re-encoded, nothing read from damage
    np.testing.assert_array_equal(np.asarray(out.embeddings), REFERENCE)
    again = run(store, Encoder())
    assert again.cache_hit
    np.testing.assert_array_equal(np.asarray(again.embeddings), REFERENCE)


@pytest.mark.parametrize("damage", [flip_bytes, nan_rows, truncate, empty, zero, short])
def test_damaged_part_is_re_encoded_and_never_merged(tmp_path, damage):
    store, entry = interrupted(tmp_path)
    part = entry / "part-000001.npy"
    damage(part)
    enc = Encoder()
    with pytest.warns(StoreWarning, match=r"part-000001.npy: "):
        out = run(store, enc)
    assert enc.encoded == TEXTS[4:]  # part 0 kept, the damaged part 1 and the missing part 2 encoded
    np.testing.assert_array_equal(np.asarray(out.embeddings), REFERENCE)
    assert sorted(p.name for p in entry.iterdir()) == ["embeddings.npy", "meta.json"]


def test_part_without_a_manifest_record_is_not_trusted(tmp_path):
    """A part written by someone else (or before its record) is re-encoded, not merged."""
    store, entry = interrupted(tmp_path)
    np.save(entry / "part-000002.npy", np.zeros((2, 4), np.float32))
    enc = Encoder()
    with pytest.warns(StoreWarning, match="no checksum record"):
        out = run(store, enc)
    assert enc.encoded == TEXTS[8:]
    np.testing.assert_array_equal(np.asarray(out.embeddings), REFERENCE)


def test_damaged_manifest_starts_the_entry_over(tmp_path):
    store, final = finished(tmp_path)
    (final.parent / "meta.json").write_text("{not json", encoding="utf-8")
    enc = Encoder()
    out = run(store, enc)
    assert enc.encoded == TEXTS
    np.testing.assert_array_equal(np.asarray(out.embeddings), REFERENCE)


def test_manifest_records_rows_and_checksums(tmp_path):
    store, entry = interrupted(tmp_path)
    meta = json.loads((entry / "meta.json").read_text())
    assert sorted(meta["parts"]) == ["part-000000.npy", "part-000001.npy"]
    rec = meta["parts"]["part-000001.npy"]
    assert (
        rec["rows"] == 4
        and rec["dim"] == 4
        and rec["sha256"] == store_module.sha256_file(entry / "part-000001.npy")
    )
    run(store, Encoder())
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["parts"] == {} and meta["final"]["rows"] == 10
    assert meta["final"]["sha256"] == store_module.sha256_file(entry / "embeddings.npy")


def test_finiteness_is_checked_even_when_the_checksum_matches(tmp_path):
    path = tmp_path / "a.npy"
    arr = REFERENCE.copy()
    arr[1, 2] = np.inf
    np.save(path, arr)
    record = {"rows": 10, "dim": 4, "bytes": path.stat().st_size, "sha256": store_module.sha256_file(path)}
    got, why = verify_array(path, record, 10)
    assert got is None and "NaN or infinite" in why
    np.save(path, REFERENCE)
    record.update(sha256=store_module.sha256_file(path))
    got, why = verify_array(path, record, 10)
    assert why == "" and np.array_equal(got, REFERENCE)


def test_non_finite_encoder_output_is_never_stored(tmp_path):
    store = EmbeddingStore(tmp_path, chunk_size=4)

    def bad(texts):
        out = vectors(texts)
        if TEXTS[5] in texts:
            out[1, 0] = np.nan
        return out

    with pytest.raises(ValueError, match="NaN or infinite values \\(first at text 5\\)"):
        run(store, bad)
    assert sorted(p.name for p in store.entry_dir(key()).iterdir()) == ["meta.json", "part-000000.npy"]


def test_progress_advances_per_batch(tmp_path, monkeypatch):
    updates: list[int] = []

    class Bar:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def update(self, n=1):
            updates.append(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(store_module, "tqdm", Bar)

    def encode(texts, progress):
        for lo in range(0, len(texts), 2):  # batches of 2 inside a chunk of 4
            progress.update(len(texts[lo : lo + 2]))
        return vectors(texts)

    out = cached_encode(
        EmbeddingStore(tmp_path, chunk_size=4),
        model_fingerprint="model",
        max_length=64,
        pooling="mean",
        texts=TEXTS,
        prompt="",
        encode=encode,
        desc="t",
        encode_takes_progress=True,
    )
    np.testing.assert_array_equal(np.asarray(out.embeddings), REFERENCE)
    assert [n for n in updates if n] == [2, 2, 2, 2, 2]  # per batch, not per 4-text chunk


WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from embedforge.store import EmbeddingStore, StoreKey, texts_fingerprint

    root, name, signal_dir = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    texts = [f"text number {i}" for i in range(10)]
    encoded = []

    def encode(batch):
        if not encoded:  # holding the entry lock: tell the test, wait until the other process started
            (signal_dir / f"{name}.locked").touch()
            while not (signal_dir / "other.started").exists():
                time.sleep(0.01)
            time.sleep(0.3)  # let the other process reach the lock
        encoded.extend(batch)
        return np.array([[len(t), sum(map(ord, t)) % 97, 0, 1.0] for t in batch], np.float32)

    if name == "second":
        (signal_dir / "other.started").touch()
    out = EmbeddingStore(root, chunk_size=3).get_or_encode(
        StoreKey("model", texts_fingerprint(texts), "", 64, "mean"), texts, encode, show_progress=False
    )
    json.dump({"encoded": encoded, "hit": out.cache_hit, "sum": float(np.asarray(out.embeddings).sum())},
              open(signal_dir / f"{name}.json", "w"))
    """
)


def test_two_processes_share_one_entry(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    root, signals = tmp_path / "store", tmp_path / "signals"
    signals.mkdir()
    first = subprocess.Popen([sys.executable, str(script), str(root), "first", str(signals)])
    deadline = time.monotonic() + 120
    while not (signals / "first.locked").exists():  # the first process holds the lock and is encoding
        assert first.poll() is None, "the first worker died"
        assert time.monotonic() < deadline, "the first worker never started encoding"
        time.sleep(0.01)
    second = subprocess.Popen([sys.executable, str(script), str(root), "second", str(signals)])
    assert first.wait(timeout=120) == 0 and second.wait(timeout=120) == 0
    a = json.loads((signals / "first.json").read_text())
    b = json.loads((signals / "second.json").read_text())
    assert len(a["encoded"]) == 10 and not a["hit"]
    assert b["encoded"] == [] and b["hit"]  # waited for the lock, then reused the entry
    assert a["sum"] == b["sum"]
    [entry] = root.iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["embeddings.npy", "meta.json"]  # no orphans
