"""LangChain: our Embeddings and document compressor (in-process and against a live server), and
LangChain's own OpenAIEmbeddings pointed at the server. Vectors and scores equal the library's."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_openai import OpenAIEmbeddings

from embedforge.integrations._client import EmbedforgeError
from embedforge.integrations.langchain import EmbedforgeEmbeddings, EmbedforgeRerank

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
def embeddings(request, embedder, server):
    if request.param == "in-process":
        return lambda **kw: EmbedforgeEmbeddings(embedder, **kw)
    return lambda **kw: EmbedforgeEmbeddings(base_url=server.url, api_key="secret", model=EMBEDDER_ID, **kw)


@pytest.fixture(params=["in-process", "server"])
def rerank(request, reranker, server):
    if request.param == "in-process":
        return lambda **kw: EmbedforgeRerank(reranker=reranker, **kw)
    return lambda **kw: EmbedforgeRerank(base_url=server.url, api_key="secret", model=RERANKER_ID, **kw)


def test_embeddings_equal_the_library(embeddings, embedder):
    emb = embeddings()
    assert np.array_equal(
        f32(emb.embed_documents(DOCS)), embedder.encode_documents(DOCS)
    )  # 6 > 4 per request
    assert np.array_equal(f32(emb.embed_query(QUERY)), embedder.encode_queries([QUERY])[0])
    assert np.array_equal(f32(asyncio.run(emb.aembed_documents(DOCS))), embedder.encode_documents(DOCS))
    assert np.array_equal(f32(asyncio.run(emb.aembed_query(QUERY))), embedder.encode_queries([QUERY])[0])
    custom = embeddings(instruction="Find code", dimensions=32)
    assert np.array_equal(
        f32(custom.embed_query(QUERY)), embedder.encode_queries([QUERY], "Find code", dim=32)[0]
    )
    assert np.array_equal(f32(custom.embed_documents(DOCS[:2])), embedder.encode_documents(DOCS[:2], dim=32))


def test_rerank_compressor_equals_reranker(rerank, reranker):
    docs = [Document(page_content=d, metadata={"n": i}, id=str(i)) for i, d in enumerate(DOCS[:4])]
    want = reranker.score(QUERY, DOCS[:4])
    order = [int(i) for i in np.argsort(-want, kind="stable")]
    top = rerank(top_n=2).compress_documents(docs, QUERY)
    assert [d.metadata["n"] for d in top] == order[:2] and [d.id for d in top] == [str(i) for i in order[:2]]
    assert [d.metadata["relevance_score"] for d in top] == [float(want[i]) for i in order[:2]]
    every = asyncio.run(rerank(top_n=None, instruction="Judge").acompress_documents(docs, QUERY))
    judged = reranker.score(QUERY, DOCS[:4], instruction="Judge")
    assert {d.metadata["n"]: d.metadata["relevance_score"] for d in every} == {
        i: float(s) for i, s in enumerate(judged)
    }
    assert rerank().compress_documents([], QUERY) == []


def test_clear_errors(server, embedder):
    with pytest.raises(ValueError, match="not both"):
        EmbedforgeEmbeddings(embedder, base_url=server.url)
    with pytest.raises(EmbedforgeError, match="401.*API key"):
        EmbedforgeEmbeddings(base_url=server.url, api_key="wrong").embed_query("x")
    with pytest.raises(EmbedforgeError, match="404.*nope"):
        EmbedforgeEmbeddings(base_url=server.url, api_key="secret", model="nope").embed_query("x")
    with pytest.raises(ValueError, match=r"give reranker=Reranker\(...\) \(in-process\) or base_url"):
        EmbedforgeRerank()
    with pytest.raises(EmbedforgeError, match="413.*limit of 4"):  # one rerank is one request
        EmbedforgeRerank(base_url=server.url, api_key="secret").compress_documents(
            [Document(page_content=d) for d in DOCS], QUERY
        )


def test_langchain_openai_embeddings_with_text(server, embedder):
    """LangChain's OpenAIEmbeddings sending text (check_embedding_ctx_length=False) gets the
    library's plain-text vectors (the OpenAI route adds no prompt without input_type)."""
    client = OpenAIEmbeddings(
        model=EMBEDDER_ID,
        base_url=server.url + "/v1",
        api_key="secret",
        check_embedding_ctx_length=False,
        chunk_size=4,
    )
    assert np.array_equal(f32(client.embed_documents(DOCS)), embedder.encode(DOCS))
    assert np.array_equal(f32(client.embed_query(QUERY)), embedder.encode([QUERY])[0])
