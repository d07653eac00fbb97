"""``GET /health`` — 200 once the models are loaded, 503 before (public, no API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from embedforge.server.responses import ERROR_RESPONSES
from embedforge.server.schemas import Health
from embedforge.server.state import get_state

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses=ERROR_RESPONSES, summary="Readiness")
async def health(request: Request) -> Health:
    state = get_state(request)
    state.ready_engine()
    return Health(models=list(state.served))
