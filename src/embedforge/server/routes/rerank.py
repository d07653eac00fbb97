"""``POST /v1/rerank`` and ``POST /rerank`` — the Cohere/Jina rerank API."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from embedforge.server.engine import RerankTask
from embedforge.server.limits import check_input_count, require_api_key
from embedforge.server.responses import ERROR_RESPONSES
from embedforge.server.schemas import RerankRequest, RerankResponse
from embedforge.server.state import Task, get_state

router = APIRouter(tags=["rerank"], dependencies=[Depends(require_api_key)])


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
    out = await engine.arerank(RerankTask(req.query, documents, req.instruction, req.truncate))
    order = sorted(range(len(documents)), key=lambda i: (-float(out.scores[i]), i))  # best first, stable
    if req.top_n is not None:
        order = order[: req.top_n]
    results = []
    for i in order:
        result: dict = {"index": i, "relevance_score": float(out.scores[i])}
        if req.return_documents:
            result["document"] = {"text": documents[i]}
        results.append(result)
    body = {
        "id": uuid.uuid4().hex,
        "model": model_id,
        "results": results,
        "usage": {"total_tokens": out.tokens},
    }
    return JSONResponse(body)
