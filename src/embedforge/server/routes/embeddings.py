"""``POST /v1/embeddings`` — the OpenAI embeddings API."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from embedforge.engine import EmbedTask, EngineError, ErrorKind
from embedforge.server.cancel import engine_result
from embedforge.server.limits import check_input_count
from embedforge.server.responses import ERROR_RESPONSES
from embedforge.server.schemas import EmbeddingRequest, EmbeddingResponse, EncodingFormat
from embedforge.server.state import Task, get_state

router = APIRouter(tags=["embeddings"])  # the API key is checked before the body (ApiKeyMiddleware)


def _to_task(req: EmbeddingRequest) -> EmbedTask:
    inp = req.input
    side = req.input_type.value if req.input_type is not None else None
    common: dict[str, Any] = dict(
        side=side, instruction=req.instruction, dim=req.dimensions, truncate=req.truncate
    )
    if isinstance(inp, str):
        return EmbedTask(texts=[inp], **common)
    if isinstance(inp[0], str):
        return EmbedTask(texts=list(inp), **common)  # type: ignore[arg-type]
    if isinstance(inp[0], int):
        return EmbedTask(ids=[list(inp)], **common)  # type: ignore[arg-type]
    return EmbedTask(ids=[list(x) for x in inp], **common)  # type: ignore[union-attr]


TOKEN_IDS_REFUSED = (
    "input holds token ids, and nothing says which tokenizer made them: OpenAI clients that tokenize "
    "for you send OpenAI's tiktoken ids, which this model would read as other tokens (wrong vectors). "
    "Send text instead (LangChain: OpenAIEmbeddings(..., check_embedding_ctx_length=False)); if these "
    'are this model\'s own token ids, add "input_token_ids": true to the request.'
)


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
    task = _to_task(req)  # the engine picks the side's prompt (Engine.side_prompt)
    check_input_count(len(task), state.settings.max_request_inputs, "input")
    if task.ids is not None and not req.input_token_ids:
        raise EngineError(ErrorKind.INVALID_INPUT, TOKEN_IDS_REFUSED, param="input")
    out = await engine_result(request, engine.submit_embed(task))
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(row, req.encoding_format)}
        for i, row in enumerate(out.embeddings)
    ]
    usage = {"prompt_tokens": out.tokens, "total_tokens": out.tokens}
    # Built by hand: validating thousands of floats through the response model costs more than the model.
    return JSONResponse({"object": "list", "data": data, "model": model_id, "usage": usage})
