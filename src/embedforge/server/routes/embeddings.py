"""``POST /v1/embeddings`` — the OpenAI embeddings API."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from embedforge.server.engine import EmbedTask
from embedforge.server.limits import check_input_count, require_api_key
from embedforge.server.responses import ERROR_RESPONSES
from embedforge.server.schemas import EmbeddingRequest, EmbeddingResponse, EncodingFormat, InputType
from embedforge.server.state import Task, get_state

router = APIRouter(tags=["embeddings"], dependencies=[Depends(require_api_key)])


def _to_task(req: EmbeddingRequest, prompt: str) -> EmbedTask:
    inp = req.input
    common: dict[str, Any] = dict(prompt=prompt, dim=req.dimensions, truncate=req.truncate)
    if isinstance(inp, str):
        return EmbedTask(texts=[inp], **common)
    if isinstance(inp[0], str):
        return EmbedTask(texts=list(inp), **common)  # type: ignore[arg-type]
    if isinstance(inp[0], int):
        return EmbedTask(ids=[list(inp)], **common)  # type: ignore[arg-type]
    return EmbedTask(ids=[list(x) for x in inp], **common)  # type: ignore[union-attr]


def _encode(row: np.ndarray, fmt: EncodingFormat) -> list[float] | str:
    if fmt is EncodingFormat.BASE64:
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=ERROR_RESPONSES,
    summary="Create embeddings (OpenAI schema)",
)
async def create_embeddings(req: EmbeddingRequest, request: Request) -> JSONResponse:
    state = get_state(request)
    engine = state.ready_engine()
    model_id = state.resolve_model(req.model, Task.EMBEDDING)
    assert engine.embedder is not None
    prompt = ""
    if req.instruction is not None or req.input_type is InputType.QUERY:
        prompt = engine.embedder.query_prompt(req.instruction)
    elif req.input_type is InputType.DOCUMENT:
        prompt = engine.embedder.prompts.get("document", "")  # what Embedder.encode_documents uses
    task = _to_task(req, prompt)
    check_input_count(len(task), state.settings.max_request_inputs, "input")
    out = await engine.aembed(task)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(row, req.encoding_format)}
        for i, row in enumerate(out.embeddings)
    ]
    usage = {"prompt_tokens": out.tokens, "total_tokens": out.tokens}
    # Built by hand: validating thousands of floats through the response model costs more than the model.
    return JSONResponse({"object": "list", "data": data, "model": model_id, "usage": usage})
