"""``POST /v1/search`` — search the index the server was started with (``--index DIR``).

The index object is read from the server state (``state.index``); without one the route answers
404 naming the flag. The index encodes the query with the model and settings it was built with;
``rerank: true`` re-scores the ``rerank_top`` first hits with the served reranker through the
engine's queue (as ``POST /v1/rerank`` does: one query, its shared prefix run once).
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from dataclasses import asdict, is_dataclass
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from embedforge.corpus import document_text
from embedforge.engine import EngineError, ErrorKind, RerankTask
from embedforge.server.cancel import engine_result
from embedforge.server.responses import ERROR_RESPONSES
from embedforge.server.state import get_state

router = APIRouter(tags=["search"])  # /v1/*: the API key is checked by ApiKeyMiddleware

MAX_K = 1000


class SearchRequest(BaseModel):
    """``POST /v1/search``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"query": "What is the capital of China?", "k": 5, "where": "year > 2015"}]
        },
    )

    query: str = Field(min_length=1, max_length=65536, description="The query text.")
    k: int = Field(10, gt=0, le=MAX_K, description="How many hits to return.")
    where: str | None = Field(
        None, max_length=4096, description="SQL filter on metadata columns, e.g. `year > 2015`."
    )
    instruction: str | None = Field(
        None, max_length=4096, description="Query instruction (default: the one the index was built with)."
    )
    rerank: bool = Field(False, description="Re-score the top hits with the served reranker.")
    rerank_top: int = Field(100, gt=0, le=MAX_K, description="How many first-stage hits the reranker scores.")


class SearchHit(BaseModel):
    id: str
    score: float = Field(description="First-stage similarity (cosine for normalised vectors).")
    rank: int
    text: str = ""
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    rerank_score: float | None = None


class SearchResponse(BaseModel):
    object: str = "list"
    query: str
    data: list[SearchHit]


def _json_safe(value: Any) -> Any:
    """Metadata as JSON: NaN/inf become null, unknown types their string."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def _hit(h: Any) -> SearchHit:
    if hasattr(h, "to_dict"):
        d = h.to_dict()
    elif is_dataclass(h) and not isinstance(h, type):
        d = asdict(h)
    else:
        d = dict(h)
    d["metadata"] = {str(k): _json_safe(v) for k, v in dict(d.get("metadata") or {}).items()}
    return SearchHit(**{k: v for k, v in d.items() if k in SearchHit.model_fields})


# One search at a time per index: the index's encoder and table handles are not shared across threads.
_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _lock_of(index: Any) -> threading.Lock:
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(index, threading.Lock())


def first_stage(index: Any, req: SearchRequest, k: int) -> list[SearchHit]:
    """The index's own search (blocking). A bad ``where`` is the caller's error (400)."""
    with _lock_of(index):
        try:
            hits = index.search(req.query, k=k, where=req.where, instruction=req.instruction)
        except ValueError as exc:  # the index names the bad value (a filter that does not parse, ...)
            raise EngineError(
                ErrorKind.INVALID_INPUT, str(exc), param="where" if req.where else None
            ) from None
    if hits and isinstance(hits[0], list):  # an index that answers a batch of queries
        hits = hits[0]
    return [_hit(h) for h in hits]


def apply_rerank(hits: list[SearchHit], scores: list[float], k: int) -> list[SearchHit]:
    """Reranked head first, by rerank score (ties keep first-stage order), then the rest; ranks 1..k."""
    head, rest = hits[: len(scores)], hits[len(scores) :]
    order = sorted(range(len(head)), key=lambda i: -scores[i])
    ranked = [head[i].model_copy(update={"rerank_score": scores[i]}) for i in order] + rest
    return [h.model_copy(update={"rank": r + 1}) for r, h in enumerate(ranked[:k])]


@router.post(
    "/v1/search", response_model=SearchResponse, responses=ERROR_RESPONSES, summary="Search the index"
)
async def search(req: SearchRequest, request: Request) -> SearchResponse:
    state = get_state(request)
    index = getattr(state, "index", None)
    if index is None:
        raise EngineError(
            ErrorKind.ROUTE_NOT_FOUND,
            "this server has no index: start it with `embedforge serve --index DIR`",
        )
    if not req.rerank:
        hits = await asyncio.to_thread(first_stage, index, req, req.k)
        return SearchResponse(query=req.query, data=hits)
    engine = state.ready_engine()
    if engine.reranker is None:
        raise EngineError(
            ErrorKind.MODEL_NOT_FOUND,
            "rerank=true needs a reranker: start the server with --reranker",
            param="rerank",
        )
    hits = await asyncio.to_thread(first_stage, index, req, max(req.k, req.rerank_top))
    head = hits[: req.rerank_top]
    if head:  # through the engine's queue, exactly as POST /v1/rerank scores
        docs = [document_text(h.title, h.text) for h in head]
        out = await engine_result(request, engine.submit_rerank(RerankTask(req.query, docs, req.instruction)))
        hits = apply_rerank(hits, [float(s) for s in out.scores], req.k)
    return SearchResponse(query=req.query, data=hits[: req.k])


__all__ = ["SearchHit", "SearchRequest", "SearchResponse", "apply_rerank", "first_stage", "router"]
