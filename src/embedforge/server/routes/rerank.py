"""``POST /v1/rerank`` and ``POST /rerank`` — the Cohere/Jina rerank API."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from embedforge.engine import RerankTask
from embedforge.server.cancel import engine_result
from embedforge.server.limits import check_input_count
from embedforge.server.responses import ERROR_RESPONSES
from embedforge.server.schemas import RerankRequest, RerankResponse
from embedforge.server.state import Task, get_state

router = APIRouter(tags=["rerank"])  # the API key is checked before the body (ApiKeyMiddleware)


@router.post(
    "/v1/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES, summary="Rerank documents"
)
@router.post("/rerank", response_model=RerankResponse, responses=ERROR_RESPONSES, include_in_schema=False)
async def rerank(req: RerankRequest, request: Request) -> JSONResponse:
    state = get_state(request)
    engine = state.ready_engine()
    model_id = state.resolve_model(req.model, Task.RERANK)
    documents = [d if isinstance(d, str) else d.text for d in req.documents]
    check_input_count(len(documents), state.settings.max_request_inputs, "documents")
    task = RerankTask(req.query, documents, req.instruction, req.truncate, req.top_n)
    out = await engine_result(request, engine.submit_rerank(task))
    results = []
    for i in out.order:  # best first, ties in input order, at most top_n (the engine's ranking)
        result: dict = {"index": i, "relevance_score": float(out.scores[i])}
        if req.return_documents:
            result["document"] = {"text": documents[i]}
        results.append(result)
    body = {
        "id": uuid.uuid4().hex,
        "model": model_id,
        "results": results,
        "usage": {"total_tokens": out.tokens},
        "query_truncated": out.query_truncated,
    }
    return JSONResponse(body)
