"""What the framework integrations call: the library in-process, or an ``embedforge serve`` URL.

Both give the same numbers. In-process, embedding goes through ``Embedder.encode_queries`` /
``encode_documents`` and scoring through ``Reranker.score``; over HTTP, through
``POST /v1/embeddings`` (with ``input_type``, ``instruction``, ``dimensions`` and base64 float32,
so the vectors arrive bit for bit) and ``POST /v1/rerank``, which run those same calls.

Example::

    backend = connect(embedder=Embedder.from_pretrained(path))          # in-process
    backend = connect(base_url="http://127.0.0.1:8000", api_key="k")    # a server
    vectors = backend.embed(["what is gravity?"], side="query")          # (1, dim) float32
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from embedforge import Embedder, Reranker

Side = Literal["query", "document"]
DEFAULT_BATCH = 256  # texts per HTTP request at most (and never more than the server's limit)


class EmbedforgeError(RuntimeError):
    """A server answered with an error; the message is the server's own (it names the bad value)."""

    def __init__(self, status: int, message: str, route: str) -> None:
        super().__init__(f"embedforge server {route} answered {status}: {message}")
        self.status, self.route = status, route


class Backend(Protocol):
    def embed(
        self,
        texts: Sequence[str],
        *,
        side: Side | None,
        instruction: str | None = None,
        dim: int | None = None,
    ) -> np.ndarray: ...

    async def aembed(
        self,
        texts: Sequence[str],
        *,
        side: Side | None,
        instruction: str | None = None,
        dim: int | None = None,
    ) -> np.ndarray: ...

    def score(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> np.ndarray: ...

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> np.ndarray: ...


# --- in-process -------------------------------------------------------------------------------------
@dataclass
class LocalBackend:
    """The library objects themselves (one thread at a time per object, as the library requires)."""

    embedder: Embedder | None = None
    reranker: Reranker | None = None

    def _need(self, what: str) -> Any:
        model = self.embedder if what == "embedder" else self.reranker
        if model is None:
            raise ValueError(f"this integration was built without a {what}: pass {what}=... or base_url=...")
        return model

    def embed(
        self,
        texts: Sequence[str],
        *,
        side: Side | None,
        instruction: str | None = None,
        dim: int | None = None,
    ) -> np.ndarray:
        emb = self._need("embedder")
        if not texts:
            return np.zeros((0, dim or emb.hidden_size), dtype=np.float32)
        if side == "query":
            return np.asarray(emb.encode_queries(list(texts), instruction=instruction, dim=dim))
        if side == "document" and instruction is None:
            return np.asarray(emb.encode_documents(list(texts), dim=dim))
        prompt = emb.query_prompt(instruction) if instruction is not None else ""
        return np.asarray(emb.encode(list(texts), prompt=prompt, dim=dim))

    async def aembed(
        self,
        texts: Sequence[str],
        *,
        side: Side | None,
        instruction: str | None = None,
        dim: int | None = None,
    ) -> np.ndarray:
        return await asyncio.to_thread(self.embed, texts, side=side, instruction=instruction, dim=dim)

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        if not documents:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self._need("reranker").score(query, list(documents), instruction))

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> np.ndarray:
        return await asyncio.to_thread(self.score, query, documents, instruction=instruction)


# --- over HTTP ----------------------------------------------------------------------------------------
@dataclass
class HttpBackend:
    """An ``embedforge serve`` server (its OpenAI embeddings route and its rerank route).

    Texts go ``batch_size`` at a time, or fewer when the server's ``GET /info`` says it takes
    fewer per request; the documents of one rerank go in one request (scores over one group)."""

    base_url: str
    api_key: str | None = None
    embedding_model: str | None = None  # served ids; None: the server's embedder / reranker
    rerank_model: str | None = None
    timeout: float = 120.0
    batch_size: int = DEFAULT_BATCH
    headers: dict[str, str] = field(init=False)
    _limit: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.base_url = self.base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _embed_body(
        self, texts: Sequence[str], side: Side | None, instruction: str | None, dim: int | None
    ) -> dict:
        body: dict[str, Any] = {"input": list(texts), "encoding_format": "base64"}
        for key, value in (
            ("model", self.embedding_model),
            ("input_type", side),
            ("instruction", instruction),
            ("dimensions", dim),
        ):
            if value is not None:
                body[key] = value
        return body

    def _rerank_body(self, query: str, documents: Sequence[str], instruction: str | None) -> dict:
        body: dict[str, Any] = {"query": query, "documents": list(documents)}
        if self.rerank_model is not None:
            body["model"] = self.rerank_model
        if instruction is not None:
            body["instruction"] = instruction
        return body

    @staticmethod
    def _check(response: Any, route: str) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            message = (
                body["error"]["message"] if isinstance(body, dict) and "error" in body else response.text
            )
            raise EmbedforgeError(response.status_code, str(message), route)
        return body

    @staticmethod
    def _vectors(body: dict) -> np.ndarray:
        rows = sorted(body["data"], key=lambda d: d["index"])
        return np.stack([np.frombuffer(base64.b64decode(r["embedding"]), dtype="<f4") for r in rows])

    @staticmethod
    def _scores(body: dict, n: int) -> np.ndarray:
        scores = np.empty(n, dtype=np.float32)
        for r in body["results"]:
            scores[r["index"]] = r["relevance_score"]
        return scores

    def _learn_limit(self, info: Any) -> None:
        """Use the server's per-request input limit (``GET /info``) when it is below batch_size."""
        if self._limit is None:
            body = info.json() if info.status_code == 200 else {}
            server_max = body.get("max_client_batch_size") if isinstance(body, dict) else None
            self._limit = min(self.batch_size, server_max) if isinstance(server_max, int) else self.batch_size

    def _batches(self, texts: Sequence[str]) -> list[Sequence[str]]:
        size = self._limit or self.batch_size
        return [texts[i : i + size] for i in range(0, len(texts), size)]

    def embed(
        self,
        texts: Sequence[str],
        *,
        side: Side | None,
        instruction: str | None = None,
        dim: int | None = None,
    ) -> np.ndarray:
        import httpx

        parts = []
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout) as client:
            if len(texts) > 1 and self._limit is None:
                self._learn_limit(client.get("/info"))
            for batch in self._batches(texts):
                r = client.post("/v1/embeddings", json=self._embed_body(batch, side, instruction, dim))
                parts.append(self._vectors(self._check(r, "/v1/embeddings")))
        return np.concatenate(parts) if parts else np.zeros((0, dim or 0), dtype=np.float32)

    async def aembed(
        self,
        texts: Sequence[str],
        *,
        side: Side | None,
        instruction: str | None = None,
        dim: int | None = None,
    ) -> np.ndarray:
        import httpx

        parts = []
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout
        ) as client:
            if len(texts) > 1 and self._limit is None:
                self._learn_limit(await client.get("/info"))
            for batch in self._batches(texts):
                r = await client.post("/v1/embeddings", json=self._embed_body(batch, side, instruction, dim))
                parts.append(self._vectors(self._check(r, "/v1/embeddings")))
        return np.concatenate(parts) if parts else np.zeros((0, dim or 0), dtype=np.float32)

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        import httpx

        if not documents:
            return np.zeros(0, dtype=np.float32)
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout) as client:
            r = client.post("/v1/rerank", json=self._rerank_body(query, documents, instruction))
        return self._scores(self._check(r, "/v1/rerank"), len(documents))

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> np.ndarray:
        import httpx

        if not documents:
            return np.zeros(0, dtype=np.float32)
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout
        ) as client:
            r = await client.post("/v1/rerank", json=self._rerank_body(query, documents, instruction))
        return self._scores(self._check(r, "/v1/rerank"), len(documents))


def connect(
    *,
    embedder: Embedder | None = None,
    reranker: Reranker | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    timeout: float = 120.0,
    batch_size: int = DEFAULT_BATCH,
    task: Literal["embedding", "rerank"] = "embedding",
) -> Backend:
    """In-process when given model objects, over HTTP when given ``base_url`` (not both).
    ``model`` is the served id to ask for (``task`` says whether it is an embedder or a reranker)."""
    local = embedder is not None or reranker is not None
    what = "reranker=Reranker(...)" if task == "rerank" else "embedder=Embedder(...)"
    if local and base_url is not None:
        raise ValueError(f"give either {what} (in-process) or base_url=... (a server), not both")
    if not local and base_url is None:
        raise ValueError(f"give {what} (in-process) or base_url=... (an embedforge server)")
    if local:
        return LocalBackend(embedder, reranker)
    assert base_url is not None
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
    models = {"embedding_model": model} if task == "embedding" else {"rerank_model": model}
    return HttpBackend(base_url, api_key, timeout=timeout, batch_size=batch_size, **models)


__all__ = ["Backend", "EmbedforgeError", "HttpBackend", "LocalBackend", "connect"]
