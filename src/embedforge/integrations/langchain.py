"""LangChain: ``EmbedforgeEmbeddings`` and the ``EmbedforgeRerank`` document compressor.

Queries get the model's query prompt (``Embedder.encode_queries``, with ``instruction`` when
given) and documents none (``encode_documents``); the compressor keeps the ``top_n`` documents by
``Reranker.score``, best first, each with its ``relevance_score`` in ``metadata``.

Example::

    from embedforge.integrations.langchain import EmbedforgeEmbeddings, EmbedforgeRerank

    embeddings = EmbedforgeEmbeddings(base_url="http://127.0.0.1:8000")      # or embedder=Embedder(...)
    rerank = EmbedforgeRerank(reranker=Reranker.from_pretrained(path), top_n=3)
    retriever = ContextualCompressionRetriever(base_compressor=rerank, base_retriever=...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, Field, PrivateAttr

from embedforge.integrations._client import DEFAULT_BATCH, Backend, connect
from embedforge.reranker import rank_order


class EmbedforgeEmbeddings(Embeddings):
    """LangChain embeddings from an ``Embedder`` (in-process) or an embedforge server URL."""

    def __init__(
        self,
        embedder: Any = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        timeout: float = 120.0,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        """``instruction``: the task instruction put before queries (default: the model's query
        prompt); ``dimensions``: Matryoshka, keep the first N dimensions."""
        self.backend: Backend = connect(
            embedder=embedder,
            base_url=base_url,
            api_key=api_key,
            model=model,
            timeout=timeout,
            batch_size=batch_size,
        )
        self.instruction, self.dimensions = instruction, dimensions

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.backend.embed(texts, side="document", dim=self.dimensions).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.backend.embed([text], side="query", instruction=self.instruction, dim=self.dimensions)[
            0
        ].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return (await self.backend.aembed(texts, side="document", dim=self.dimensions)).tolist()

    async def aembed_query(self, text: str) -> list[float]:
        out = await self.backend.aembed(
            [text], side="query", instruction=self.instruction, dim=self.dimensions
        )
        return out[0].tolist()


class EmbedforgeRerank(BaseDocumentCompressor):
    """Keep the ``top_n`` most relevant documents by the Qwen3 reranker, best first."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reranker: Any = Field(None, description="A Reranker (in-process); or give base_url.")
    base_url: str | None = Field(None, description="An embedforge server, e.g. http://127.0.0.1:8000.")
    api_key: str | None = None
    model: str | None = Field(None, description="Served reranker id (default: the server's reranker).")
    top_n: int | None = Field(3, gt=0, description="Documents to keep (None: all, reordered).")
    instruction: str | None = Field(None, description="Task instruction (default: web search).")
    timeout: float = 120.0
    _backend: Backend = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        self._backend = connect(
            reranker=self.reranker,
            base_url=self.base_url,
            api_key=self.api_key,
            model=self.model,
            timeout=self.timeout,
            task="rerank",
        )

    def _ranked(self, documents: Sequence[Document], scores: Any) -> list[Document]:
        return [
            Document(
                page_content=documents[i].page_content,
                metadata={**documents[i].metadata, "relevance_score": float(scores[i])},
                id=documents[i].id,
            )
            for i in rank_order(scores, self.top_n)
        ]

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        texts = [d.page_content for d in documents]
        return self._ranked(documents, self._backend.score(query, texts, instruction=self.instruction))

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        texts = [d.page_content for d in documents]
        return self._ranked(documents, await self._backend.ascore(query, texts, instruction=self.instruction))


__all__ = ["EmbedforgeEmbeddings", "EmbedforgeRerank"]
