"""LlamaIndex: our embedding class and node postprocessor, in-process and against a live server,
inside a real VectorStoreIndex. Vectors and scores equal the library's."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import NodeWithScore, TextNode

from embedforge.integrations.llama_index import EmbedforgeEmbedding, EmbedforgeRerank

EMBEDDER_ID = "tiny-embedder"  # the ids of the conftest's server
RERANKER_ID = "tiny-reranker"
QUERY = "What is the capital of China?"
DOCS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts bodies.",
    "Paris is in France.",
    "Beijing hosted the 2008 Olympics.",
    "Water boils at 100 degrees Celsius.",
    "The Great Wall is in China.",
]


def f32(rows) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


@pytest.fixture(params=["in-process", "server"])
def embedding(request, embedder, server):
    if request.param == "in-process":
        return lambda **kw: EmbedforgeEmbedding(embedder, **kw)
    return lambda **kw: EmbedforgeEmbedding(base_url=server.url, api_key="secret", model=EMBEDDER_ID, **kw)


@pytest.fixture(params=["in-process", "server"])
def rerank(request, reranker, server):
    if request.param == "in-process":
        return lambda **kw: EmbedforgeRerank(reranker, **kw)
    return lambda **kw: EmbedforgeRerank(base_url=server.url, api_key="secret", model=RERANKER_ID, **kw)


def test_embedding_equals_the_library(embedding, embedder):
    emb = embedding()
    assert np.array_equal(f32(emb.get_text_embedding_batch(DOCS)), embedder.encode_documents(DOCS))
    assert np.array_equal(f32(emb.get_query_embedding(QUERY)), embedder.encode_queries([QUERY])[0])
    assert np.array_equal(f32(emb.get_text_embedding(DOCS[0])), embedder.encode_documents(DOCS[:1])[0])
    assert np.array_equal(
        f32(asyncio.run(emb.aget_query_embedding(QUERY))), embedder.encode_queries([QUERY])[0]
    )
    docs = asyncio.run(emb.aget_text_embedding_batch(DOCS))
    assert np.array_equal(f32(docs), embedder.encode_documents(DOCS))
    custom = embedding(instruction="Find code", dimensions=32)
    assert np.array_equal(
        f32(custom.get_query_embedding(QUERY)), embedder.encode_queries([QUERY], "Find code", dim=32)[0]
    )


def test_vector_index_retrieval_uses_our_vectors(embedding, embedder):
    nodes = [TextNode(text=d, id_=str(i)) for i, d in enumerate(DOCS)]
    index = VectorStoreIndex(nodes, embed_model=embedding())
    hits = index.as_retriever(similarity_top_k=3).retrieve(QUERY)
    sims = embedder.encode_documents(DOCS) @ embedder.encode_queries([QUERY])[0]  # (n_docs,)
    want = [int(i) for i in np.argsort(-sims, kind="stable")[:3]]
    assert [int(h.node.node_id) for h in hits] == want
    assert np.allclose([h.score for h in hits], sims[want], atol=1e-6)


def test_rerank_postprocessor_equals_reranker(rerank, reranker):
    nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i)), score=0.0) for i, d in enumerate(DOCS[:4])]
    want = reranker.score(QUERY, DOCS[:4])
    order = [int(i) for i in np.argsort(-want, kind="stable")]
    top = rerank(top_n=2).postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.node_id for n in top] == [str(i) for i in order[:2]]
    assert [n.score for n in top] == [float(want[i]) for i in order[:2]]
    judged = rerank(top_n=None, instruction="Judge").postprocess_nodes(nodes, query_str=QUERY)
    want_judged = reranker.score(QUERY, DOCS[:4], instruction="Judge")
    assert {n.node.node_id: n.score for n in judged} == {str(i): float(s) for i, s in enumerate(want_judged)}
    with pytest.raises(ValueError, match="needs the query"):
        rerank().postprocess_nodes(nodes)
