"""Reranker: token ids and scores equal the model card; shared-prefix reuse equals the plain path."""

from __future__ import annotations

import numpy as np
import pytest

from embedforge import Reranker
from embedforge.inputs import InputTooLongError
from embedforge.prompts import DEFAULT_RERANK_INSTRUCTION, format_rerank_document, format_rerank_query
from embedforge.reranker import common_prefix_length, rank_order
from reference import CardReranker
from texts import DOCUMENTS, QUERIES

TOL = 1e-5


@pytest.fixture(scope="module")
def rr(tiny_reranker_dir) -> Reranker:
    return Reranker.from_pretrained(tiny_reranker_dir)


@pytest.fixture(scope="module")
def card(tiny_reranker_dir) -> CardReranker:
    return CardReranker(tiny_reranker_dir)


def all_pairs():
    return [(q, d) for q in QUERIES[:3] for d in DOCUMENTS]


def test_template_token_ids(rr):
    assert rr.suffix_ids == [151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]
    assert (rr.yes_id, rr.no_id) == (9693, 2152)
    assert rr.prefix_ids[0] == 151644 and rr.prefix_ids[-2:] == rr.tokenizer.encode("user\n")


@pytest.mark.parametrize("instruction", [None, "Given a claim, find documents that refute it"])
def test_token_ids_equal_model_card(rr, card, instruction):
    pairs = all_pairs()
    assert rr.tokenize_pairs(pairs, instruction) == card.ids(pairs, instruction)


def test_truncation_cuts_only_the_pair(tiny_reranker_dir):
    short = Reranker.from_pretrained(tiny_reranker_dir, max_length=80)
    card = CardReranker(tiny_reranker_dir, max_length=80)
    pairs = [("q", " ".join(["word"] * 200)), ("q", "short")]
    ours = short.tokenize_pairs(pairs)
    assert ours == card.ids(pairs)
    assert (
        len(ours[0]) == 80
        and ours[0][-9:] == short.suffix_ids
        and ours[0][: len(short.prefix_ids)] == short.prefix_ids
    )


@pytest.mark.parametrize("instruction", [None, "Given a claim, find documents that refute it"])
def test_logits_and_scores_equal_model_card_full_logits(rr, card, instruction):
    pairs = all_pairs()
    ref_logits, ref_scores = card.logits_and_scores(pairs, instruction)
    ids = rr.tokenize_pairs(pairs, instruction)
    logits = rr.forward(**rr.collate(ids)).detach().numpy()
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-6)  # logits are O(100) here
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], ref_logits[:, 1] - ref_logits[:, 0], atol=1e-4)
    np.testing.assert_allclose(rr.score_pairs(pairs, instruction), ref_scores, atol=TOL, rtol=0)


def test_prefix_reuse_equals_plain_path(tiny_reranker_dir, card):
    reuse = Reranker.from_pretrained(tiny_reranker_dir, prefix_reuse=True, batch_tokens=200)
    plain = Reranker.from_pretrained(tiny_reranker_dir, prefix_reuse=False)
    for query in QUERIES:
        a = reuse.score(query, DOCUMENTS)
        b = plain.score(query, DOCUMENTS)
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)
    pairs = all_pairs() + [("lonely query", "its only document")]
    np.testing.assert_allclose(reuse.score_pairs(pairs), card.logits_and_scores(pairs)[1], atol=TOL, rtol=0)


def test_prefix_reuse_logit_margin_equals_plain(tiny_reranker_dir, monkeypatch):
    """Compare yes-no margins, which stay informative where random-model scores saturate."""
    rr = Reranker.from_pretrained(tiny_reranker_dir)
    captured = []
    original = rr.logits_from_hidden
    monkeypatch.setattr(rr, "logits_from_hidden", lambda h: captured.append(original(h)) or captured[-1])
    ids = rr.tokenize_pairs([(QUERIES[0], d) for d in DOCUMENTS])
    rr.score_ids(ids, groups=[range(len(ids))])
    reuse_margin = np.concatenate([c[:, 1] - c[:, 0] for c in captured])
    assert len(captured) >= 1 and len(reuse_margin) == len(ids)
    plain = rr.forward(**rr.collate(ids)).detach()
    # score_ids runs batches in length order; compare as multisets of margins, then exactly by sorting
    np.testing.assert_allclose(np.sort(reuse_margin), np.sort((plain[:, 1] - plain[:, 0]).numpy()), atol=1e-4)


def test_common_prefix_is_taken_from_full_token_sequences(rr):
    """BPE merges across the query/document boundary: the shared prefix must come from the
    tokenized full sequences, not from tokenizing the shared text alone."""
    pairs = [("capital", "The capital"), ("capital", "There is"), ("capital", "Then")]
    ids = rr.tokenize_pairs(pairs)
    n = common_prefix_length(ids)
    assert all(x[:n] == ids[0][:n] for x in ids)
    assert len({x[n] for x in ids}) > 1  # the next token differs somewhere
    text_prefix_ids = rr.prefix_ids + rr.tokenizer.encode(
        "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: capital\n<Document>: ",
        add_special_tokens=False,
    )
    assert n <= len(text_prefix_ids)
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # always leaves one token to run


@pytest.mark.parametrize("budget", [1, 150, 100_000])
def test_any_batch_budget_gives_the_same_scores(rr, budget):
    pairs = all_pairs()
    np.testing.assert_allclose(
        rr.score_pairs(pairs, batch_tokens=budget), rr.score_pairs(pairs), atol=TOL, rtol=0
    )


def test_rank_sorts_by_score_and_keeps_indices(rr):
    scores = rr.score(QUERIES[0], DOCUMENTS)
    ranked = rr.rank(QUERIES[0], DOCUMENTS, top_k=5)
    assert len(ranked) == 5
    assert [r.index for r in ranked] == list(np.argsort(-scores, kind="stable")[:5])
    assert all(r.document == DOCUMENTS[r.index] for r in ranked)
    assert all(0.0 <= r.score <= 1.0 for r in ranked)


def test_reranker_forward_is_differentiable(rr):
    out = rr.forward(**rr.collate(rr.tokenize_pairs([("q", "d")])))
    out[:, 1].sum().backward()
    assert rr.model.get_output_embeddings().weight.grad is not None
    rr.model.zero_grad(set_to_none=True)


def test_long_query_is_cut_so_documents_keep_their_share(tiny_reranker_dir):
    """A query far longer than the window must not cut the documents away (all would score alike)."""
    rr = Reranker.from_pretrained(tiny_reranker_dir, max_length=256)
    card = CardReranker(tiny_reranker_dir, max_length=256)
    query = " ".join(f"term{i}" for i in range(600))
    docs = ["The capital of China is Beijing.", "Gravity attracts bodies.", " ".join(["long"] * 400)]
    pairs = [(query, d) for d in docs]
    with pytest.warns(UserWarning, match="query was cut"):
        out = rr.tokenize_pairs(pairs)
    info = rr.tokenize_pairs_with_info(pairs)
    assert info.ids == out and info.query_truncated == [True, True, True]

    def encode(text):
        return rr.tokenizer.encode(text, add_special_tokens=False)

    room = 256 - len(rr.prefix_ids) - len(rr.suffix_ids)
    fixed = len(encode(format_rerank_query("", DEFAULT_RERANK_INSTRUCTION)))
    share = (room - fixed - len(encode(format_rerank_document("")))) // 2
    doc_room = room - fixed - share  # what the stated rule promises a document
    for doc, ids, ref in zip(docs, out, card.ids(pairs), strict=True):
        assert len(ids) == 256 and ids[: len(rr.prefix_ids)] == rr.prefix_ids and ids[-9:] == rr.suffix_ids
        body = ids[len(rr.prefix_ids) : -len(rr.suffix_ids)]
        doc_part = encode(format_rerank_document(doc))[:doc_room]
        assert body[-len(doc_part) :] == doc_part  # the document keeps min(its length, doc_room) tokens
        query_part = encode(format_rerank_query(query, DEFAULT_RERANK_INSTRUCTION))
        assert body[: -len(doc_part)] == query_part[: room - len(doc_part)]
        assert "<Document>" not in rr.tokenizer.decode(ref)  # the model card's cut loses the document
    margins = rr.forward(**rr.collate(out)).detach()  # (3, 2)
    assert len(set((margins[:, 1] - margins[:, 0]).tolist())) == 3  # documents are told apart again


def test_queries_within_their_share_are_never_cut(tiny_reranker_dir):
    rr = Reranker.from_pretrained(tiny_reranker_dir, max_length=256)
    card = CardReranker(tiny_reranker_dir, max_length=256)
    pairs = [(" ".join(["q"] * 20), " ".join(["word"] * 500)), ("short", "doc")]
    info = rr.tokenize_pairs_with_info(pairs)
    assert info.query_truncated == [False, False]
    assert info.ids == card.ids(pairs)


def test_check_lengths_names_the_first_pair_that_needs_truncation(tiny_reranker_dir):
    rr = Reranker.from_pretrained(tiny_reranker_dir, max_length=80)
    rr.check_lengths([("q", "short")], name="documents")
    with pytest.raises(
        InputTooLongError, match=r"documents\[1\] is \d+ tokens long, over this model's limit of 80"
    ) as e:
        rr.check_lengths([("q", "short"), ("q", " ".join(["word"] * 100))], name="documents")
    assert e.value.index == 1 and e.value.limit == 80 and e.value.n_tokens > 80


def test_rank_order_best_first_ties_in_input_order():
    assert rank_order([0.1, 0.9, 0.5, 0.9]) == [1, 3, 2, 0]
    assert rank_order(np.array([0.2, np.nan, 0.7], dtype=np.float32)) == [2, 0, 1]
    assert rank_order([0.3, 0.3, 0.3], top_k=2) == [0, 1]
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        rank_order([0.1], top_k=0)


def test_vocab_size_is_the_embedding_table(rr):
    assert rr.vocab_size == rr.model.get_input_embeddings().num_embeddings == 151669
    assert rr.template_tokens == len(rr.prefix_ids) + len(rr.suffix_ids)
