"""Cohere's dialect driven by the real Cohere SDK against a live server: v2 rerank, v1 and v2 embed,
quantised embedding types, Cohere's error shape. Every vector and score equals the library's."""

from __future__ import annotations

import base64

import cohere
import httpx
import numpy as np
import pytest

EMBEDDER_ID = "tiny-embedder"  # the ids the conftest's servers use
RERANKER_ID = "tiny-reranker"

QUERIES = ["What is the capital of China?", "Explain gravity"]
DOCS = ["The capital of China is Beijing.", "Gravity is a force that attracts bodies.", "Paris is in France."]


def v2(url: str, key: str = "unused") -> cohere.ClientV2:
    return cohere.ClientV2(api_key=key, base_url=url, timeout=60)


def v1(url: str, key: str = "unused") -> cohere.Client:
    return cohere.Client(api_key=key, base_url=url, timeout=60)


# --- independent references: Cohere's / sentence-transformers' definitions, written out -------------
def ref_int8(x: np.ndarray) -> np.ndarray:
    """Scalar quantisation over the fixed range [-1, 1]: 255 steps, -128 offset, rounded."""
    step = np.float32(2.0 / 255.0)
    return np.clip(np.rint((x - np.float32(-1.0)) / step - np.float32(128.0)), -128, 127).astype(int)


def ref_ubinary(x: np.ndarray) -> np.ndarray:
    return np.packbits(x > 0, axis=1).astype(int)  # (n, dim / 8), bit i of a byte = sign of dim


def test_v2_rerank_equals_reranker_score(server, reranker):
    client = v2(server.url)
    want = reranker.score(QUERIES[0], DOCS)
    order = [int(i) for i in np.argsort(-want, kind="stable")]
    res = client.rerank(model=RERANKER_ID, query=QUERIES[0], documents=DOCS)
    assert [r.index for r in res.results] == order
    assert [r.relevance_score for r in res.results] == [float(want[i]) for i in order]
    assert res.id and res.meta is not None and res.meta.api_version.version == "2"
    assert res.meta.billed_units.search_units == 1

    top = client.rerank(model=RERANKER_ID, query=QUERIES[0], documents=DOCS, top_n=2)
    assert [r.index for r in top.results] == order[:2]

    with httpx.Client(base_url=server.url, timeout=60) as c:  # the `instruction` extension
        body = c.post(
            "/v2/rerank", json={"query": QUERIES[0], "documents": DOCS, "instruction": "Judge"}
        ).json()
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert [got[i] for i in range(len(DOCS))] == reranker.score(
        QUERIES[0], DOCS, instruction="Judge"
    ).tolist()


def test_v1_rerank_with_the_v1_client(server, reranker):
    res = v1(server.url).rerank(model=RERANKER_ID, query=QUERIES[1], documents=DOCS)
    want = reranker.score(QUERIES[1], DOCS)
    assert {r.index: r.relevance_score for r in res.results} == {i: float(s) for i, s in enumerate(want)}


def test_v2_embed_sides_match_the_library(server, embedder):
    client = v2(server.url)
    q = client.embed(model=EMBEDDER_ID, texts=QUERIES, input_type="search_query", embedding_types=["float"])
    assert np.array_equal(np.array(q.embeddings.float_, dtype=np.float32), embedder.encode_queries(QUERIES))
    assert q.texts == QUERIES and q.response_type == "embeddings_by_type"
    n_tokens = sum(len(x) for x in embedder.tokenize(QUERIES, prompt=embedder.query_prompt()))
    assert q.meta.billed_units.input_tokens == n_tokens

    d = client.embed(model=EMBEDDER_ID, texts=DOCS, input_type="search_document")  # float by default
    assert np.array_equal(np.array(d.embeddings.float_, dtype=np.float32), embedder.encode_documents(DOCS))

    c = client.embed(model=EMBEDDER_ID, texts=DOCS, input_type="clustering", embedding_types=["float"])
    assert np.array_equal(np.array(c.embeddings.float_, dtype=np.float32), embedder.encode(DOCS))

    small = client.embed(
        model=EMBEDDER_ID,
        texts=QUERIES,
        input_type="search_query",
        output_dimension=32,
        embedding_types=["float"],
    )
    assert np.array_equal(
        np.array(small.embeddings.float_, dtype=np.float32), embedder.encode_queries(QUERIES, dim=32)
    )


def test_v2_embed_quantised_types(server, embedder):
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    res = v2(server.url).embed(
        model=EMBEDDER_ID, texts=DOCS, input_type="search_document", embedding_types=types
    )
    x = embedder.encode_documents(DOCS)  # (n, dim) float32
    e = res.embeddings
    assert np.array_equal(np.array(e.float_, dtype=np.float32), x)
    decoded = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in e.base64])
    assert np.array_equal(decoded, x)
    assert np.array_equal(np.array(e.int8), ref_int8(x))
    assert np.array_equal(np.array(e.uint8), ref_int8(x) + 128)
    assert np.array_equal(np.array(e.ubinary), ref_ubinary(x))
    assert np.array_equal(np.array(e.binary), ref_ubinary(x) - 128)
    assert np.array(e.ubinary).shape == (len(DOCS), x.shape[1] // 8)
    assert np.array(e.int8).min() >= -128 and np.array(e.uint8).max() <= 255


def test_v1_embed_float_envelope_and_by_type(server, embedder):
    client = v1(server.url)
    plain = client.embed(model=EMBEDDER_ID, texts=QUERIES, input_type="search_query")
    assert plain.response_type == "embeddings_floats"
    assert np.array_equal(np.array(plain.embeddings, dtype=np.float32), embedder.encode_queries(QUERIES))
    typed = client.embed(texts=DOCS, input_type="search_document", embedding_types=["float", "int8"])
    assert typed.response_type == "embeddings_by_type"
    x = embedder.encode_documents(DOCS)
    assert np.array_equal(np.array(typed.embeddings.float_, dtype=np.float32), x)
    assert np.array_equal(np.array(typed.embeddings.int8), ref_int8(x))
    untyped = client.embed(texts=DOCS)  # no input_type: plain text
    assert np.array_equal(np.array(untyped.embeddings, dtype=np.float32), embedder.encode(DOCS))


def test_errors_in_cohere_shape(server, embedder):
    client = v2(server.url)
    with pytest.raises(cohere.NotFoundError) as nf:
        client.rerank(model="rerank-v3.5", query="q", documents=["d"])
    assert set(nf.value.body) == {"id", "message"} and "rerank-v3.5" in nf.value.body["message"]
    with pytest.raises(cohere.NotFoundError):
        client.embed(model=RERANKER_ID, texts=["x"], input_type="search_query")  # a reranker, not an embedder
    with pytest.raises(cohere.BadRequestError) as bad:
        client.embed(model=EMBEDDER_ID, texts=["x"], input_type="image")
    assert "image" in bad.value.body["message"]
    with pytest.raises(cohere.BadRequestError) as start:
        client.embed(model=EMBEDDER_ID, texts=["x"], input_type="search_query", truncate="START")
    assert "START" in start.value.body["message"]
    with pytest.raises(cohere.BadRequestError) as dims:
        client.embed(model=EMBEDDER_ID, texts=["x"], input_type="search_query", output_dimension=4096)
    assert "4096" in dims.value.body["message"]
    long_text = "word " * (embedder.max_length + 10)
    with pytest.raises(cohere.BadRequestError) as long:
        client.embed(model=EMBEDDER_ID, texts=[long_text], input_type="search_document", truncate="NONE")
    assert str(embedder.max_length) in long.value.body["message"]
    cut = client.embed(model=EMBEDDER_ID, texts=[long_text], input_type="search_document", truncate="END")
    assert np.array_equal(
        np.array(cut.embeddings.float_, dtype=np.float32), embedder.encode_documents([long_text])
    )
    with httpx.Client(base_url=server.url, timeout=60) as c:
        missing = c.post("/v2/embed", json={"model": EMBEDDER_ID, "texts": ["x"]})  # v2 needs input_type
        assert missing.status_code == 422 and set(missing.json()) == {"id", "message"}
        assert "input_type" in missing.json()["message"]
        typo = c.post("/v2/rerank", json={"query": "q", "documents": ["d"], "top_k": 1})
        assert typo.status_code == 422 and "top_k" in typo.json()["message"]


def test_api_key_and_input_limit(make_server, embedder):
    with make_server(api_key="secret", max_request_inputs=2) as srv:
        with pytest.raises(cohere.UnauthorizedError):
            v2(srv.url, "wrong").rerank(model=RERANKER_ID, query="q", documents=["d"])
        with pytest.raises(cohere.UnauthorizedError) as unauthorized:
            v2(srv.url, "wrong").embed(model=EMBEDDER_ID, texts=["x"], input_type="search_query")
        assert set(unauthorized.value.body) == {"id", "message"}
        with pytest.raises(cohere.UnauthorizedError):
            v1(srv.url, "wrong").embed(texts=["x"])
        ok = v2(srv.url, "secret").embed(model=EMBEDDER_ID, texts=["x"], input_type="search_query")
        assert np.array_equal(
            np.array(ok.embeddings.float_, dtype=np.float32), embedder.encode_queries(["x"])
        )
        with httpx.Client(base_url=srv.url, timeout=60, headers={"Authorization": "Bearer secret"}) as c:
            r = c.post("/v2/embed", json={"texts": ["a", "b", "c"], "input_type": "search_query"})
        assert r.status_code == 413 and "limit of 2" in r.json()["message"]
