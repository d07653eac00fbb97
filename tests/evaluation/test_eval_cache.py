"""The on-disk embedding cache: hits, invalidation by model and data, resume after a failure."""

from __future__ import annotations

import numpy as np
import pytest

from embedforge.store import EmbeddingStore as EmbeddingCache
from embedforge.store import StoreKey as CacheKey
from embedforge.store import cached_encode, texts_fingerprint


class CountingEncoder:
    """Deterministic vectors from the text, counting every text it encodes; can fail on demand."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.encoded: list[str] = []
        self.fail_on = fail_on

    def __call__(self, texts):
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("interrupted")
        self.encoded.extend(texts)
        return np.array([[len(t), sum(map(ord, t)) % 97, 1.0] for t in texts], dtype=np.float32)


TEXTS = [f"document number {i}" for i in range(10)]


def encode(cache, enc, texts=TEXTS, model="m1", prompt=""):
    return cached_encode(
        cache,
        model_fingerprint=model,
        max_length=128,
        pooling="mean",
        texts=texts,
        prompt=prompt,
        encode=enc,
        desc="t",
        show_progress=False,
    )


def test_second_call_is_a_hit_with_identical_vectors(tmp_path):
    cache, enc = EmbeddingCache(tmp_path, chunk_size=3), CountingEncoder()
    first = encode(cache, enc)
    assert not first.cache_hit and len(enc.encoded) == 10
    again = encode(cache, enc)
    assert again.cache_hit and len(enc.encoded) == 10  # nothing re-encoded
    np.testing.assert_array_equal(np.asarray(again.embeddings), np.asarray(first.embeddings))
    np.testing.assert_array_equal(np.asarray(first.embeddings), enc(TEXTS))


@pytest.mark.parametrize(
    "change",
    [
        {"model": "m2"},  # changed weights -> new fingerprint
        {"texts": TEXTS[:-1] + ["document number 9 (edited)"]},  # changed data
        {"prompt": "query: "},  # other prompt
    ],
)
def test_changed_model_data_or_prompt_reencodes(tmp_path, change):
    cache, enc = EmbeddingCache(tmp_path), CountingEncoder()
    encode(cache, enc)
    n = len(enc.encoded)
    out = encode(cache, enc, **change)
    assert not out.cache_hit and len(enc.encoded) == n + 10


def test_key_covers_max_length_and_pooling():
    base = CacheKey("m", "d", "", 128, "mean")
    assert (
        len(
            {
                base.digest(),
                CacheKey("m", "d", "", 256, "mean").digest(),
                CacheKey("m", "d", "", 128, "cls").digest(),
            }
        )
        == 3
    )


def test_interrupted_encoding_resumes_from_written_chunks(tmp_path):
    cache = EmbeddingCache(tmp_path, chunk_size=4)
    failing = CountingEncoder(fail_on=TEXTS[9])  # third chunk fails
    with pytest.raises(RuntimeError, match="interrupted"):
        encode(cache, failing)
    assert len(failing.encoded) == 8  # two chunks were written
    resumed = CountingEncoder()
    out = encode(cache, resumed)
    assert resumed.encoded == TEXTS[8:]  # only the missing chunk is encoded
    np.testing.assert_array_equal(np.asarray(out.embeddings), CountingEncoder()(TEXTS))
    assert sorted(
        p.name for p in cache.entry_dir(CacheKey("m1", texts_fingerprint(TEXTS), "", 128, "mean")).iterdir()
    ) == ["embeddings.npy", "meta.json"]


def test_key_must_match_texts(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = CacheKey("m", texts_fingerprint(["a"]), "", 8, "mean")
    with pytest.raises(ValueError, match="data_fingerprint"):
        cache.get_or_encode(key, ["b"], CountingEncoder(), show_progress=False)


def test_fingerprint_is_order_and_boundary_sensitive():
    assert texts_fingerprint(["ab", "c"]) != texts_fingerprint(["a", "bc"])
    assert texts_fingerprint(["a", "b"]) != texts_fingerprint(["b", "a"])
    assert texts_fingerprint(["a", "b"]) == texts_fingerprint(["a", "b"])
