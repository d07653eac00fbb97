"""Evaluation's progress bar advances per encoded batch, through the embedding store and without it."""

from __future__ import annotations

import numpy as np
import pytest

from embedforge import store as store_module
from embedforge.evaluation.encoding import encode_side
from embedforge.store import EmbeddingStore


class BatchEmbedder:
    """An embedder whose ``encode`` advances a given progress bar per batch of 2 texts."""

    fingerprint, max_length, pooling, hidden_size, prompts = "fake", 16, "mean", 2, {}

    def query_prompt(self, instruction=None):
        return ""

    def encode(self, texts, *, prompt="", show_progress=False, progress=None):
        assert progress is not None, "evaluation must hand its bar to the embedder"
        for lo in range(0, len(texts), 2):
            progress.update(len(texts[lo : lo + 2]))
        return np.array([[len(t), 1.0] for t in texts], np.float32)


@pytest.mark.parametrize("with_store", [True, False])
def test_encode_side_progress_is_per_batch(tmp_path, monkeypatch, with_store):
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
    texts = [f"t{i}" * (i + 1) for i in range(8)]
    store = EmbeddingStore(tmp_path, chunk_size=4) if with_store else None
    out = encode_side(BatchEmbedder(), texts, "", cache=store, desc="corpus")
    np.testing.assert_array_equal(np.asarray(out.embeddings)[:, 0], [len(t) for t in texts])
    assert [n for n in updates if n] == [2, 2, 2, 2]
