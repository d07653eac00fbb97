"""Embedder: equivalence with the model-card reference and sentence-transformers, invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedforge import Embedder
from embedforge.inputs import InputTooLongError
from reference import CARD_TASK, card_embed, card_embedding_ids, get_detailed_instruct
from texts import DOCUMENTS, QUERIES

TOL = 1e-5


@pytest.fixture(scope="module")
def emb(tiny_embedder_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_embedder_dir)


@pytest.fixture(scope="module")
def emb_plain(tiny_embedder_plain_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_embedder_plain_dir)


def card_queries(instruction=CARD_TASK):
    return [get_detailed_instruct(instruction, q) for q in QUERIES]


@pytest.mark.parametrize("flavour", ["post_processor", "plain"])
def test_token_ids_match_model_card_and_end_token_appended_once(
    flavour, emb, emb_plain, tiny_embedder_dir, tiny_embedder_plain_dir
):
    model, path = (
        (emb, tiny_embedder_dir) if flavour == "post_processor" else (emb_plain, tiny_embedder_plain_dir)
    )
    ours = model.tokenize(QUERIES, prompt=model.query_prompt())
    ref = card_embedding_ids(path, card_queries(), tokenizer_appends_eos=flavour == "post_processor")
    assert ours == ref
    for ids in ours + model.tokenize(DOCUMENTS):
        assert ids[-1] == 151643 and ids[-2] != 151643


def test_query_prompt_is_the_model_card_format(emb, emb_plain):
    expected = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
    assert emb.query_prompt() == expected  # from config_sentence_transformers.json
    assert emb_plain.query_prompt() == expected  # bare decoder: Qwen3 default
    assert emb.query_prompt("Find code") == "Instruct: Find code\nQuery:"


@pytest.mark.parametrize("flavour", ["post_processor", "plain"])
@pytest.mark.parametrize("dim", [None, 32])
def test_embeddings_equal_model_card(
    flavour, dim, emb, emb_plain, tiny_embedder_dir, tiny_embedder_plain_dir
):
    model, path = (
        (emb, tiny_embedder_dir) if flavour == "post_processor" else (emb_plain, tiny_embedder_plain_dir)
    )
    appends = flavour == "post_processor"
    ref_q = card_embed(path, card_queries(), tokenizer_appends_eos=appends, dim=dim)
    ref_d = card_embed(path, DOCUMENTS, tokenizer_appends_eos=appends, dim=dim)
    q = model.encode_queries(QUERIES, dim=dim)
    d = model.encode_documents(DOCUMENTS, dim=dim)
    assert q.dtype == np.float32 and q.shape == (len(QUERIES), dim or 64)
    np.testing.assert_allclose(q, ref_q, atol=TOL, rtol=0)
    np.testing.assert_allclose(d, ref_d, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)


def test_custom_instruction_equals_model_card(emb, tiny_embedder_dir):
    task = "Given a question, retrieve Wikipedia passages that answer the question"
    ref = card_embed(tiny_embedder_dir, card_queries(task))
    np.testing.assert_allclose(emb.encode_queries(QUERIES, instruction=task), ref, atol=TOL, rtol=0)


def test_equals_sentence_transformers_with_qwen3_config(emb, tiny_embedder_dir):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_embedder_dir), device="cpu")
    st.tokenizer.padding_side = "left"
    np.testing.assert_allclose(
        emb.encode_queries(QUERIES), st.encode(QUERIES, prompt_name="query"), atol=TOL, rtol=0
    )
    np.testing.assert_allclose(emb.encode_documents(DOCUMENTS), st.encode(DOCUMENTS), atol=TOL, rtol=0)


def test_real_minilm_equals_sentence_transformers(minilm_dir):
    from sentence_transformers import SentenceTransformer

    ours = Embedder.from_pretrained(minilm_dir)
    assert ours.pooling == "mean" and ours.normalize and ours.max_length == 256 and not ours.is_decoder
    st = SentenceTransformer(str(minilm_dir), device="cpu")
    texts = DOCUMENTS + QUERIES + [" ".join(["long"] * 400)]  # the last one is truncated to 256 tokens
    np.testing.assert_allclose(ours.encode(texts), st.encode(texts), atol=TOL, rtol=0)


@pytest.mark.parametrize("budget", [1, 48, 300, 100_000])
def test_any_batch_budget_gives_the_same_embeddings(emb, budget):
    base = emb.encode_documents(DOCUMENTS, batch_tokens=64)
    np.testing.assert_allclose(emb.encode_documents(DOCUMENTS, batch_tokens=budget), base, atol=TOL, rtol=0)


def test_input_order_and_chunking_do_not_change_embeddings(emb):
    base = emb.encode_documents(DOCUMENTS)
    perm = np.random.default_rng(0).permutation(len(DOCUMENTS))
    shuffled = emb.encode_documents([DOCUMENTS[i] for i in perm])
    np.testing.assert_allclose(shuffled, base[perm], atol=TOL, rtol=0)
    np.testing.assert_allclose(emb.encode_documents(DOCUMENTS, chunk_size=3), base, atol=TOL, rtol=0)


def test_left_and_right_padding_give_the_same_embeddings(tiny_embedder_dir):
    left = Embedder.from_pretrained(tiny_embedder_dir, padding_side="left")
    right = Embedder.from_pretrained(tiny_embedder_dir, padding_side="right")
    np.testing.assert_allclose(left.encode(DOCUMENTS), right.encode(DOCUMENTS), atol=TOL, rtol=0)


def test_batched_equals_one_by_one(emb):
    batched = emb.encode_documents(DOCUMENTS)
    single = np.stack([emb.encode_documents(d) for d in DOCUMENTS])
    np.testing.assert_allclose(batched, single, atol=TOL, rtol=0)


def test_matryoshka_dim_is_truncate_then_renormalise(emb):
    full = emb.encode_documents(DOCUMENTS)
    small = emb.encode_documents(DOCUMENTS, dim=48)
    expected = full[:, :48] / np.linalg.norm(full[:, :48], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expected, atol=TOL, rtol=0)


def test_torch_output_and_single_string(emb):
    t = emb.encode(["hello"], convert_to="torch")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (1, 64)
    v = emb.encode("hello")
    assert v.shape == (64,)
    np.testing.assert_allclose(v, t[0].numpy(), atol=TOL)


def test_forward_is_differentiable(emb):
    batch = emb.collate(emb.tokenize(["a b c", "d"]))
    out = emb.forward(**batch)
    out.sum().backward()
    grads = [p.grad for p in emb.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    emb.model.zero_grad(set_to_none=True)


def test_save_pretrained_round_trip(emb, tmp_path):
    emb.save_pretrained(tmp_path / "saved")
    again = Embedder.from_pretrained(tmp_path / "saved")
    assert again.pooling == "lasttoken" and again.prompts == emb.prompts
    np.testing.assert_allclose(again.encode_queries(QUERIES), emb.encode_queries(QUERIES), atol=TOL, rtol=0)


def test_encoder_without_sentence_transformers_files_gets_mean_pooling(minilm_dir, tmp_path):
    import shutil

    bare = tmp_path / "bare-minilm"
    bare.mkdir()
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ):
        shutil.copy(minilm_dir / name, bare / name)
    model = Embedder.from_pretrained(bare)
    assert model.pooling == "mean" and model.normalize and model.query_prompt() == ""


def test_sentence_transformers_6_layout_loads(minilm_dir, tmp_path):
    """sentence-transformers >= 6 saves ``{"pooling_mode": "mean"}`` and the max length in the tokenizer config."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_dir), device="cpu")
    st.save(str(tmp_path / "st6"))
    ours = Embedder.from_pretrained(tmp_path / "st6")
    assert ours.pooling == "mean" and ours.normalize and ours.max_length == 256
    texts = DOCUMENTS[:5] + [" ".join(["long"] * 400)]
    np.testing.assert_allclose(ours.encode(texts), st.encode(texts), atol=TOL, rtol=0)


def test_side_prompt_is_the_one_rule(emb, emb_plain):
    instructed = "Instruct: Find code\nQuery:"
    for model in (emb, emb_plain):
        assert model.side_prompt("query") == model.query_prompt() == get_detailed_instruct(CARD_TASK, "")
        assert model.side_prompt("document") == ""
        assert model.side_prompt(None) == ""
        assert model.side_prompt("query", "Find code") == instructed
        assert model.side_prompt("document", "Find code") == instructed  # symmetric tasks
        assert model.side_prompt(None, "Find code") == instructed
    with pytest.raises(ValueError, match=r"side must be one of \['query', 'document'\] or None, got 'doc'"):
        emb.side_prompt("doc")
    np.testing.assert_array_equal(
        emb.encode_documents(DOCUMENTS[:3], instruction="Find code"),
        emb.encode(DOCUMENTS[:3], prompt=instructed),
    )


def test_vocab_size_added_tokens_and_length_check(emb, minilm_dir):
    assert emb.vocab_size == emb.model.get_input_embeddings().num_embeddings == 151669
    assert emb.added_tokens == 1 and emb.hidden_size == 64
    raw = emb.raw_ids(["hello world", "word " * 9000])
    assert raw[0] == emb.tokenizer.encode("hello world", add_special_tokens=False)
    assert len(raw[1]) > emb.max_length  # raw ids are never truncated
    emb.check_lengths(raw[:1] + [raw[0] + [151643]])
    with pytest.raises(
        InputTooLongError, match=r"input\[1\] is \d+ tokens long, over this model's limit of 8192"
    ):
        emb.check_lengths(raw)
    encoder = Embedder.from_pretrained(minilm_dir)
    assert encoder.added_tokens == 2  # [CLS] ... [SEP]
    assert encoder.vocab_size == encoder.model.get_input_embeddings().num_embeddings


def test_a_callers_progress_bar_advances_per_batch(emb):
    class Counter:
        def __init__(self):
            self.steps = []

        def update(self, n=1):
            self.steps.append(n)

    bar = Counter()
    out = emb.encode_documents(DOCUMENTS, batch_tokens=64, progress=bar)
    assert sum(bar.steps) == len(DOCUMENTS) and len(bar.steps) > 1  # per batch, not per call
    np.testing.assert_array_equal(out, emb.encode_documents(DOCUMENTS, batch_tokens=64))
