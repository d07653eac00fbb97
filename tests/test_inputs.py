"""Bad input to the embedder and reranker: each a defined result or a clear error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from embedforge import CheckpointError, Embedder, Reranker
from embedforge.inputs import MIN_DIM
from embedforge.pooling import truncate_and_normalize


@pytest.fixture(scope="module")
def emb(tiny_embedder_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_embedder_dir)


def test_empty_list_gives_an_empty_matrix(emb):
    out = emb.encode([])
    assert out.shape == (0, 64) and out.dtype == np.float32
    assert emb.encode_queries([], dim=32).shape == (0, 32)


def test_empty_string_is_embedded_as_the_end_token_alone(emb):
    assert emb.tokenize([""]) == [[151643]]
    v = emb.encode_documents([""])
    assert np.isfinite(v).all() and abs(np.linalg.norm(v) - 1) < 1e-5


def test_non_string_names_its_index(emb):
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        emb.encode(["a", "b", 3])
    with pytest.raises(TypeError, match="list of str"):
        emb.encode(42)


def test_over_long_text_is_truncated_keeping_the_end_token(tiny_embedder_dir):
    short = Embedder.from_pretrained(tiny_embedder_dir, max_length=16)
    ids = short.tokenize(["word " * 100])[0]
    assert len(ids) == 16 and ids[-1] == 151643
    long_text, longer_text = "word " * 100, "word " * 100 + "tail that is cut away"
    np.testing.assert_allclose(short.encode([long_text]), short.encode([longer_text]), atol=1e-6)


@pytest.mark.parametrize("dim", [0, 31, 65, -1])
def test_dim_out_of_range(emb, dim):
    with pytest.raises(ValueError, match=r"between 32 and 64"):
        emb.encode(["x"], dim=dim)


def test_dim_of_wrong_type(emb):
    with pytest.raises(TypeError, match="dim must be an int"):
        emb.encode(["x"], dim=32.0)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Embedder.from_pretrained(tmp_path / "nope")


def test_missing_weights_file(tiny_embedder_dir, tmp_path):
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_embedder_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"no-weights has no weights: expected one of model.safetensors"
    ):
        Embedder.from_pretrained(broken)


def test_pickle_only_checkpoint_needs_explicit_opt_in(tiny_reranker_dir, tmp_path):
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_reranker_dir, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="only pickle weights"):
        Reranker.from_pretrained(pickled)
    with pytest.raises(CheckpointError, match="allow_pickle=True"):
        Embedder.from_pretrained(pickled)
    rr = Reranker.from_pretrained(pickled, allow_pickle=True)
    ref = Reranker.from_pretrained(tiny_reranker_dir)
    np.testing.assert_allclose(rr.score("q", ["d1", "d2"]), ref.score("q", ["d1", "d2"]), atol=1e-6)


def test_unknown_dtype_and_bad_budget(tiny_embedder_dir, emb):
    with pytest.raises(ValueError, match="dtype 'float8' is not supported"):
        Embedder.from_pretrained(tiny_embedder_dir, dtype="float8")
    with pytest.raises(ValueError, match="batch_tokens must be a positive int"):
        emb.encode(["x"], batch_tokens=0)


def test_reranker_bad_pairs(tiny_reranker_dir):
    rr = Reranker.from_pretrained(tiny_reranker_dir)
    with pytest.raises(TypeError, match=r"pairs\[1\] must be a \(query, document\) pair"):
        rr.score_pairs([("q", "d"), ("only one",)])
    with pytest.raises(TypeError, match=r"documents\[0\] is NoneType"):
        rr.score("q", [None])
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        rr.rank("q", ["d"], top_k=0)
    assert rr.score("q", []).shape == (0,)
    assert rr.rank("q", []) == []


def test_lone_surrogates_are_refused_naming_the_index(emb, tiny_reranker_dir):
    with pytest.raises(
        ValueError,
        match=r"texts\[1\] is not valid Unicode: it holds the lone surrogate U\+D800 at character 1",
    ):
        emb.encode(["fine", "a\ud800b"])
    with pytest.raises(ValueError, match=r"texts\[0\] is not valid Unicode"):
        emb.encode_queries("\udfff")
    with pytest.raises(ValueError, match=r"instruction is not valid Unicode"):
        emb.encode_queries(["q"], instruction="bad \ud800")
    rr = Reranker.from_pretrained(tiny_reranker_dir)
    with pytest.raises(ValueError, match=r"query is not valid Unicode"):
        rr.score("q\ud800", ["d"])
    with pytest.raises(ValueError, match=r"documents\[2\] is not valid Unicode"):
        rr.score("q", ["d", "e", "\udc00"])
    with pytest.raises(ValueError, match=r"pairs\[1\]\[1\] \(the document\) is not valid Unicode"):
        rr.score_pairs([("q", "d"), ("q", "x\ud834")])
    assert emb.encode(["a \U0001f600 b"]).shape == (1, 64)  # a proper surrogate pair's character is fine


def test_min_dim_is_one_constant(emb):
    assert MIN_DIM == 32
    assert emb.encode(["x"], dim=MIN_DIM).shape == (1, MIN_DIM)
    with pytest.raises(ValueError, match=f"between {MIN_DIM} and 64"):
        emb.encode(["x"], dim=MIN_DIM - 1)


def test_truncate_and_normalize_is_one_rule_for_numpy_and_torch():
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    x[1] = 0.0  # a zero row stays zero (norm floored at 1e-12)
    for dim in (None, 32, 48):
        a = truncate_and_normalize(x, dim, True)
        b = truncate_and_normalize(torch.from_numpy(x), dim, True).numpy()
        assert a.dtype == np.float32 and a.shape == (5, dim or 64)
        np.testing.assert_allclose(a, b, atol=1e-7, rtol=0)
        assert np.all(a[1] == 0)
    np.testing.assert_array_equal(truncate_and_normalize(x, 32, False), x[:, :32])
