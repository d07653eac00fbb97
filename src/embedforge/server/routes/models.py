"""``GET /v1/models`` — the served models (OpenAI schema, plus task, length and dimensions)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from embedforge.server.responses import ERROR_RESPONSES
from embedforge.server.schemas import ModelCard, ModelList
from embedforge.server.state import Task, get_state

router = APIRouter(tags=["models"])  # the API key is checked by ApiKeyMiddleware


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES, summary="List served models")
async def list_models(request: Request) -> ModelList:
    state = get_state(request)
    engine = state.ready_engine()
    cards = []
    for model_id, task in state.served.items():
        if task is Task.EMBEDDING and engine.embedder is not None:
            model = engine.embedder
            cards.append(
                ModelCard(
                    id=model_id,
                    created=state.created,
                    task="embedding",
                    max_length=model.max_length,
                    dimensions=model.hidden_size,
                )
            )
        elif task is Task.RERANK and engine.reranker is not None:
            cards.append(
                ModelCard(
                    id=model_id, created=state.created, task="rerank", max_length=engine.reranker.max_length
                )
            )
    return ModelList(data=cards)
