"""Search over a real LanceDB index equals brute force; filters, quantised and ANN search, rerank."""

from __future__ import annotations

import json

import numpy as np
import pytest
from index_testdata import assert_same_ranking, brute_force, full_texts, scores_by_id

from embedforge.corpus import read_documents
from embedforge.index import Index, IndexStateError
from embedforge.index.quantize import CompactVectors, int8_ranges, quantize_binary, quantize_int8

QUERIES = ["protein in the brain", "cancer drug trial", "sleep and memory", "insulin dose risk"]


def test_stored_vectors_are_the_embedders_documents_in_corpus_order(built, corpus_file, tiny_embedder):
    index = Index.open(built, tiny_embedder)
    docs = read_documents(corpus_file)
    vec = index.vectors()
    assert vec.ids == [d.id for d in docs]
    ref = tiny_embedder.encode_documents(full_texts(docs))
    np.testing.assert_allclose(vec.matrix, ref, rtol=0, atol=1e-5)


def test_exact_search_equals_brute_force_ranking(built, tiny_embedder):
    index = Index.open(built, tiny_embedder)
    vec = index.vectors()
    q = tiny_embedder.encode_queries(QUERIES)
    hits = index.search(QUERIES, k=15)
    for qi, hs in enumerate(hits):
        ids, scores = brute_force(q[qi], vec.matrix, vec.ids, 15)
        assert_same_ranking([h.id for h in hs], ids, scores_by_id(q[qi], vec.matrix, vec.ids))
        np.testing.assert_allclose([h.score for h in hs], scores, rtol=0, atol=1e-5)
        assert [h.rank for h in hs] == list(range(1, 16))


def test_hits_carry_text_title_and_metadata(built, corpus_file, tiny_embedder):
    by_id = {d.id: d for d in read_documents(corpus_file)}
    hit = Index.open(built, tiny_embedder).search("cell gene", k=1)[0]
    doc = by_id[hit.id]
    assert (hit.text, hit.title) == (doc.text, doc.title)
    assert hit.metadata == {"year": doc.metadata["year"], "topic": doc.metadata["topic"]}
    assert hit.rerank_score is None


def test_where_filters_metadata_and_ranks_like_brute_force_on_the_subset(built, corpus_file, tiny_embedder):
    index = Index.open(built, tiny_embedder)
    vec = index.vectors()
    meta = {d.id: d.metadata for d in read_documents(corpus_file)}
    keep = np.asarray([meta[i]["year"] > 2015 and meta[i]["topic"] != "chem" for i in vec.ids])
    hits = index.search("virus immune", k=10, where="year > 2015 AND topic != 'chem'")
    sub_ids = [i for i, k in zip(vec.ids, keep, strict=True) if k]
    q = tiny_embedder.encode_queries("virus immune")
    ids, _ = brute_force(q, vec.matrix[keep], sub_ids, 10)
    assert_same_ranking([h.id for h in hits], ids, scores_by_id(q, vec.matrix, vec.ids))
    assert all(h.metadata["year"] > 2015 and h.metadata["topic"] != "chem" for h in hits)


@pytest.mark.parametrize(
    "where, message", [("year >>> 3", "not a valid filter"), ("colour = 'red'", "colour"), ("", "non-empty")]
)
def test_bad_where_is_a_clear_error(built, tiny_embedder, where, message):
    with pytest.raises(ValueError, match=message):
        Index.open(built, tiny_embedder).search("gene", where=where)


def test_query_dimension_mismatch_is_a_clear_error(built):
    index = Index.open(built)  # no model needed to search with vectors
    with pytest.raises(ValueError, match=r"holds 64-d vectors"):
        index.search_vectors(np.zeros((1, 32), np.float32))


def test_bad_k_and_mode(built, tiny_embedder):
    index = Index.open(built, tiny_embedder)
    with pytest.raises(ValueError, match="k must be"):
        index.search("gene", k=0)
    with pytest.raises(ValueError, match="mode 'fuzzy'"):
        index.search("gene", mode="fuzzy")
    with pytest.raises(ValueError, match="no ANN index"):
        index.search("gene", mode="ann")


def test_manifest_records_the_model_and_the_index_loads_it(built, tiny_embedder, tiny_embedder_dir):
    m = json.loads((built / "manifest.json").read_text())
    assert m["fingerprint"] == tiny_embedder.fingerprint
    assert m["model"] == str(tiny_embedder_dir.resolve())
    assert (m["dim"], m["max_length"], m["pooling"], m["normalize"]) == (64, 64, "lasttoken", True)
    assert m["query_prompt"] == tiny_embedder.query_prompt(None)
    assert m["metadata_columns"] == ["year", "topic"]
    # no embedder given: search loads the model the manifest names, with its settings
    loaded = Index.open(built)
    hits = loaded.search(QUERIES[0], k=5)
    assert loaded.embedder is not tiny_embedder and loaded.embedder.fingerprint == tiny_embedder.fingerprint
    assert [h.id for h in hits] == [h.id for h in Index.open(built, tiny_embedder).search(QUERIES[0], k=5)]


def test_opening_with_another_model_is_refused(built, tiny_embedder_plain_dir):
    from embedforge import Embedder

    other = Embedder.from_pretrained(tiny_embedder_plain_dir, max_length=64)
    with pytest.raises(IndexStateError, match="fingerprint"):
        Index.open(built, other)


def test_matryoshka_dim_is_stored_and_queries_match(tmp_path, docs, tiny_embedder):
    index = Index.build(docs[:40], tmp_path / "ix", tiny_embedder, dim=32, show_progress=False)
    vec = index.vectors()
    np.testing.assert_allclose(
        vec.matrix, tiny_embedder.encode_documents(full_texts(read_docs(docs[:40])), dim=32), atol=1e-5
    )
    q = tiny_embedder.encode_queries("gene", dim=32)
    ids, _ = brute_force(q, vec.matrix, vec.ids, 5)
    assert_same_ranking([h.id for h in index.search("gene", k=5)], ids, scores_by_id(q, vec.matrix, vec.ids))
    for bad in (16, 65):
        with pytest.raises(ValueError, match=f"dim={bad} is out of range"):
            Index.build(docs[:4], tmp_path / "ix2", tiny_embedder, dim=bad, show_progress=False)
    assert not (tmp_path / "ix2").exists()  # refused before anything was written


def assert_rankings(index, queries, got, want):
    vec = index.vectors()
    for q, g, w in zip(index.encode_queries(queries), got, want, strict=True):
        assert_same_ranking([h.id for h in g], [h.id for h in w], scores_by_id(q, vec.matrix, vec.ids))


def read_docs(rows):
    from embedforge.index._seams import iter_docs

    return list(iter_docs(rows))


# ---------------------------------------------------------------- quantisation


def test_quantizers_match_sentence_transformers():
    from sentence_transformers.quantization import quantize_embeddings

    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 64)).astype(np.float32)
    np.testing.assert_array_equal(quantize_binary(x)[:, :8], quantize_embeddings(x, precision="ubinary"))
    ranges = int8_ranges(x)
    ref = quantize_embeddings(x, precision="int8", ranges=ranges)
    assert np.abs(quantize_int8(x, ranges).astype(int) - ref.astype(int)).max() <= 1  # ST floors, we round


def test_binary_padding_never_adds_distance():
    x = np.random.default_rng(1).standard_normal((3, 20)).astype(np.float32)  # 20 bits -> 1 word
    codes = CompactVectors.from_vectors("binary", x)
    assert codes.bytes_per_vector == 8
    assert codes.candidates(x[1], 1).tolist() == [1]


@pytest.mark.parametrize("mode", ["binary", "int8"])
def test_quantised_search_rescoring_every_row_equals_exact(built, tiny_embedder, mode):
    index = Index.open(built, tiny_embedder)
    exact = index.search(QUERIES, k=10, mode="exact")
    n = len(index)
    full = index.search(QUERIES, k=10, mode=mode, rescore_multiplier=n)  # every row is a candidate
    assert_rankings(index, QUERIES, full, exact)
    few = index.search(QUERIES, k=10, mode=mode, rescore_multiplier=2)
    assert index.vectors(full=False).matrix is None  # memory holds the codes; rescoring reads the disk
    for hs in few:  # rescored with full precision: the scores are exact dot products, best first
        assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)
    where = index.search("gene", k=5, mode=mode, where="topic = 'bio'", rescore_multiplier=n)
    assert_rankings(index, ["gene"], [where], [index.search("gene", k=5, where="topic = 'bio'")])


def test_optimize_quantize_is_recorded_and_used_by_auto(tmp_path, built, tiny_embedder):
    import shutil

    shutil.copytree(built, tmp_path / "ix")
    index = Index.open(tmp_path / "ix", tiny_embedder)
    out = index.optimize(quantize="int8")
    assert out["quantization"] == "int8"
    again = Index.open(tmp_path / "ix", tiny_embedder)
    assert again.manifest.quantization == "int8" and len(again.manifest.int8_ranges) == 2
    assert again.info()["quantization"] == "int8"
    auto = again.search(QUERIES, k=5, rescore_multiplier=len(again))
    assert_rankings(again, QUERIES, auto, again.search(QUERIES, k=5, mode="exact"))


def test_ann_index_with_every_partition_probed_equals_exact(tmp_path, built, tiny_embedder):
    import shutil

    shutil.copytree(built, tmp_path / "ix")
    index = Index.open(tmp_path / "ix", tiny_embedder)
    with pytest.raises(ValueError, match="not one of"):
        index.optimize(ann="kdtree")
    index.optimize(ann="ivf_flat", num_partitions=2)
    info = index.info()
    assert info["ann"]["type"] == "ivf_flat" and info["indices"][0]["indexed_rows"] == len(index)
    exact = index.search(QUERIES, k=10, mode="exact")
    ann = index.search(QUERIES, k=10, nprobes=2)  # auto -> ann
    assert_rankings(index, QUERIES, ann, exact)
    np.testing.assert_allclose(
        [h.score for hs in ann for h in hs], [h.score for hs in exact for h in hs], atol=1e-5
    )


# ---------------------------------------------------------------- rerank


def test_retrieve_then_rerank_in_one_call(built, tiny_embedder, tiny_reranker):
    index = Index.open(built, tiny_embedder)
    first = index.search(QUERIES[:2], k=8)
    got = index.search(QUERIES[:2], k=5, rerank=tiny_reranker, rerank_top=8)
    for q, f, hs in zip(QUERIES[:2], first, got, strict=True):
        texts = [(h.title + " " + h.text).strip() for h in f]
        ref = tiny_reranker.score(q, texts)
        order = np.argsort(-ref, kind="stable")[:5]
        assert [h.id for h in hs] == [f[i].id for i in order]
        np.testing.assert_allclose([h.rerank_score for h in hs], ref[order], atol=1e-5)
        assert [h.rank for h in hs] == [1, 2, 3, 4, 5]
        by_id = {h.id: h.score for h in f}
        assert all(h.score == by_id[h.id] for h in hs)  # first-stage score kept


def test_rerank_top_smaller_than_k_keeps_the_rest_in_first_stage_order(built, tiny_embedder, tiny_reranker):
    index = Index.open(built, tiny_embedder)
    first = index.search("gene", k=6)
    got = index.search("gene", k=6, rerank=tiny_reranker, rerank_top=3)
    assert {h.id for h in got[:3]} == {h.id for h in first[:3]}
    assert [h.id for h in got[3:]] == [h.id for h in first[3:]]
    assert all(h.rerank_score is None for h in got[3:])
    with pytest.raises(ValueError, match="rerank_top"):
        index.search("gene", rerank=tiny_reranker, rerank_top=0)
