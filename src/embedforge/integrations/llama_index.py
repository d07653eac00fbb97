"""LlamaIndex: ``EmbedforgeEmbedding`` and the ``EmbedforgeRerank`` node postprocessor.

Queries get the model's query prompt (``Embedder.encode_queries``, with ``instruction`` when
given), node texts none (``encode_documents``); the postprocessor keeps the ``top_n`` nodes by
``Reranker.score`` of their embedding text (``MetadataMode.EMBED``), best first, scored.

Example::

    from embedforge.integrations.llama_index import EmbedforgeEmbedding, EmbedforgeRerank

    Settings.embed_model = EmbedforgeEmbedding(base_url="http://127.0.0.1:8000")  # or embedder=...
    engine = index.as_query_engine(node_postprocessors=[EmbedforgeRerank(reranker=rr, top_n=3)])
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from pydantic import Field, PrivateAttr

from embedforge.integrations._client import DEFAULT_BATCH, Backend, connect
from embedforge.reranker import rank_order


class EmbedforgeEmbedding(BaseEmbedding):
    """LlamaIndex embeddings from an ``Embedder`` (in-process) or an embedforge server URL."""

    model_name: str = Field("embedforge", description="A label (the served id when `model` is given).")
    base_url: str | None = Field(None, description="An embedforge server, e.g. http://127.0.0.1:8000.")
    api_key: str | None = None
    model: str | None = Field(None, description="Served embedder id (default: the server's embedder).")
    instruction: str | None = Field(None, description="Task instruction for queries (default: the model's).")
    dimensions: int | None = Field(None, gt=0, description="Matryoshka: keep the first N dimensions.")
    timeout: float = 120.0
    _backend: Backend = PrivateAttr()

    def __init__(self, embedder: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("embed_batch_size", DEFAULT_BATCH)
        if kwargs.get("model"):
            kwargs.setdefault("model_name", kwargs["model"])
        super().__init__(**kwargs)
        self._backend = connect(
            embedder=embedder,
            base_url=self.base_url,
            api_key=self.api_key,
            model=self.model,
            timeout=self.timeout,
            batch_size=self.embed_batch_size,
        )

    @classmethod
    def class_name(cls) -> str:
        return "EmbedforgeEmbedding"

    def _query(self, texts: list[str]) -> list[list[float]]:
        return self._backend.embed(
            texts, side="query", instruction=self.instruction, dim=self.dimensions
        ).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._query([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        out = await self._backend.aembed(
            [query], side="query", instruction=self.instruction, dim=self.dimensions
        )
        return out[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._backend.embed(texts, side="document", dim=self.dimensions).tolist()

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._aget_text_embeddings([text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return (await self._backend.aembed(texts, side="document", dim=self.dimensions)).tolist()


class EmbedforgeRerank(BaseNodePostprocessor):
    """Keep the ``top_n`` most relevant nodes by the Qwen3 reranker, best first, scored."""

    base_url: str | None = Field(None, description="An embedforge server, e.g. http://127.0.0.1:8000.")
    api_key: str | None = None
    model: str | None = Field(None, description="Served reranker id (default: the server's reranker).")
    top_n: int | None = Field(3, gt=0, description="Nodes to keep (None: all, reordered).")
    instruction: str | None = Field(None, description="Task instruction (default: web search).")
    timeout: float = 120.0
    _backend: Backend = PrivateAttr()

    def __init__(self, reranker: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._backend = connect(
            reranker=reranker,
            base_url=self.base_url,
            api_key=self.api_key,
            model=self.model,
            timeout=self.timeout,
            task="rerank",
        )

    @classmethod
    def class_name(cls) -> str:
        return "EmbedforgeRerank"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("EmbedforgeRerank needs the query: pass query_str=... (or a QueryBundle)")
        if not nodes:
            return []
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        scores = self._backend.score(query_bundle.query_str, texts, instruction=self.instruction)
        return [
            NodeWithScore(node=nodes[i].node, score=float(scores[i])) for i in rank_order(scores, self.top_n)
        ]


__all__ = ["EmbedforgeEmbedding", "EmbedforgeRerank"]
