"""The runtime seam: the wrappers use only the ``Runtime`` interface, and the torch runtime is
today's code (no deprecated transformers arguments)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from embedforge import Embedder, Reranker
from embedforge.runtime import BACKENDS, Runtime, TorchRuntime
from texts import DOCUMENTS, QUERIES


class ForeignRuntime:
    """A runtime with no torch module, as an ONNX or int8 runtime would be: it gets plain arrays
    through numpy and answers only through the ``Runtime`` interface."""

    backend = "foreign"

    def __init__(self, inner: TorchRuntime, *, prefix_cache: bool = True) -> None:
        self._inner = inner
        self._prefix_cache = prefix_cache
        self.calls: list[str] = []

    hidden_size = property(lambda self: self._inner.hidden_size)
    vocab_size = property(lambda self: self._inner.vocab_size)
    device = property(lambda self: torch.device("cpu"))
    dtype = property(lambda self: torch.float32)
    supports_prefix_cache = property(lambda self: self._prefix_cache)

    @staticmethod
    def _np(*tensors):
        return [torch.from_numpy(t.cpu().numpy().copy()) for t in tensors]

    def embed(self, input_ids, attention_mask, pooling):
        self.calls.append("embed")
        return self._inner.embed(*self._np(input_ids, attention_mask), pooling)

    def last_position_states(self, input_ids, attention_mask):
        self.calls.append("last")
        return self._inner.last_position_states(*self._np(input_ids, attention_mask))

    def head_logits(self, states, token_ids):
        return self._inner.head_logits(states, token_ids)

    def build_prefix_cache(self, prefix_ids):
        if not self._prefix_cache:
            raise AssertionError("the reranker asked for a prefix cache the runtime does not support")
        self.calls.append("prefix")
        return self._inner.build_prefix_cache(prefix_ids)

    def states_after_prefix(self, cache, input_ids, attention_mask):
        return self._inner.states_after_prefix(cache, *self._np(input_ids, attention_mask))


@pytest.fixture(scope="module")
def emb(tiny_embedder_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_embedder_dir)


@pytest.fixture(scope="module")
def rr(tiny_reranker_dir) -> Reranker:
    return Reranker.from_pretrained(tiny_reranker_dir, batch_tokens=300)


def test_torch_runtime_satisfies_the_interface(emb, rr):
    assert isinstance(emb.runtime, TorchRuntime) and isinstance(emb.runtime, Runtime)
    assert isinstance(rr.runtime, Runtime) and rr.runtime.supports_prefix_cache
    assert isinstance(ForeignRuntime(rr.runtime), Runtime)
    assert emb.runtime.hidden_size == 64 and rr.runtime.vocab_size == 151669
    assert emb.device == torch.device("cpu") and rr.dtype == torch.float32


def test_embedder_on_a_foreign_runtime_gives_the_same_embeddings(emb):
    foreign = ForeignRuntime(emb.runtime)
    other = Embedder(
        foreign, emb.tokenizer, pooling=emb.pooling, prompt_table=emb.prompts, max_length=emb.max_length
    )
    np.testing.assert_array_equal(other.encode_queries(QUERIES), emb.encode_queries(QUERIES))
    np.testing.assert_array_equal(
        other.encode_documents(DOCUMENTS, dim=32), emb.encode_documents(DOCUMENTS, dim=32)
    )
    assert "embed" in foreign.calls and other.hidden_size == 64 and other.vocab_size == emb.vocab_size
    with pytest.raises(TypeError, match="'foreign' runtime, which has no torch module"):
        _ = other.model


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_reranker_on_a_foreign_runtime_gives_the_same_scores(rr, prefix_cache):
    foreign = ForeignRuntime(rr.runtime, prefix_cache=prefix_cache)
    other = Reranker(foreign, rr.tokenizer, batch_tokens=300)
    pairs = [(q, d) for q in QUERIES[:2] for d in DOCUMENTS]
    np.testing.assert_allclose(other.score_pairs(pairs), rr.score_pairs(pairs), atol=1e-6, rtol=0)
    assert ("prefix" in foreign.calls) == prefix_cache
    ranked = other.rank(QUERIES[0], DOCUMENTS, top_k=3)
    assert [r.index for r in ranked] == [r.index for r in rr.rank(QUERIES[0], DOCUMENTS, top_k=3)]


def test_prefix_reuse_uses_no_deprecated_transformers_argument(rr):
    ids = rr.tokenize_pairs([(QUERIES[0], d) for d in DOCUMENTS])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        scores = rr.score_ids(ids, groups=[range(len(ids))])
    np.testing.assert_allclose(scores, rr.score_ids(ids, groups=[[i] for i in range(len(ids))]), atol=1e-5)


def test_setting_model_makes_a_new_runtime_and_leaves_copies_alone(rr):
    """Training's save path shallow-copies the wrapper and swaps its module (LoRA merged)."""
    view = copy.copy(rr)
    merged = copy.deepcopy(rr.model)
    view.model = merged
    assert view.model is merged and rr.model is not merged and view.runtime is not rr.runtime
    assert isinstance(view.runtime, TorchRuntime) and view.runtime.causal


def test_unknown_backend_names_the_available_ones(tiny_embedder_dir, tiny_reranker_dir):
    assert BACKENDS == ("torch", "torch-int8", "onnx", "onnx-int8")
    with pytest.raises(
        ValueError,
        match=r"backend 'int4' is not available; choose one of \['torch', 'torch-int8', 'onnx', 'onnx-int8'\]",
    ):
        Embedder.from_pretrained(tiny_embedder_dir, backend="int4")
    with pytest.raises(ValueError, match="backend 'int8' is not available"):
        Reranker.from_pretrained(tiny_reranker_dir, backend="int8")
