"""``create_app(settings) -> FastAPI``: the HTTP face of the engine.

The models load in the app's lifespan, in a background thread, so ``/health`` answers 503 until
they are ready; models already loaded can be handed in instead (embedding the server in another
app, tests). At shutdown the engine refuses new work, finishes what is queued, and stops; a
request still running when the graceful-shutdown timeout ends gets a 503 (``GuardMiddleware``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import Response

from embedforge.engine import Engine, EngineError
from embedforge.server.errors import GuardMiddleware, install_error_handlers
from embedforge.server.limits import ApiKeyMiddleware, BodyLimitMiddleware
from embedforge.server.metrics import Metrics, MetricsMiddleware
from embedforge.server.metrics import router as metrics_router
from embedforge.server.routes import (
    cohere,
    embeddings,
    health,
    models,
    playground,
    rerank,
    search,
    tei,
    tokenize,
)
from embedforge.server.settings import ServerSettings
from embedforge.server.state import ServerState, Task

if TYPE_CHECKING:
    from embedforge import Embedder, Reranker

logger = logging.getLogger("embedforge.server")


def load_models(settings: ServerSettings) -> tuple[Embedder | None, Reranker | None]:
    """Load the models named by ``settings`` from their model specs (``embedforge.spec``)."""
    embedder_spec, reranker_spec = settings.embedder_spec(), settings.reranker_spec()
    embedder = embedder_spec.load_embedder() if embedder_spec is not None else None
    reranker = reranker_spec.load_reranker() if reranker_spec is not None else None
    return embedder, reranker


def build_engine(
    settings: ServerSettings, metrics: Metrics, embedder: Embedder | None, reranker: Reranker | None
) -> Engine:
    engine = Engine(
        embedder,
        reranker,
        max_batch_tokens=settings.max_batch_tokens,
        max_queue=settings.max_queue,
        batch_wait_ms=settings.batch_wait_ms,
        dynamic_batching=settings.dynamic_batching,
        retry_after_s=settings.retry_after_s,
    )
    metrics.track_engine(engine)
    return engine


def _dialect_renderers() -> dict[str, Callable[[EngineError], Response]]:
    """Which error shape a 401 takes on each client dialect's paths (``/rerank``, shared by TEI
    and the v1 alias, keeps the OpenAI shape: which one a body is cannot be known unread)."""
    shapes: dict[str, Callable[[EngineError], Response]] = {}
    for router, render in ((tei.router, tei.tei_error), (cohere.router, cohere.cohere_error)):
        for route in router.routes:
            path = getattr(route, "path", None)
            if path is not None and path != "/rerank":
                shapes[path] = render
    return shapes


def create_app(
    settings: ServerSettings,
    *,
    embedder: Embedder | None = None,
    reranker: Reranker | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The server app. Pass ``embedder`` / ``reranker`` to serve models already loaded (they must
    match the models ``settings`` names); otherwise they load from ``settings`` at start-up.
    ``on_load_error`` is called (from the loading thread) when loading fails."""
    state = ServerState(settings=settings, created=int(time.time()))
    if settings.embedder_id is not None:
        state.served[settings.embedder_id] = Task.EMBEDDING
    if settings.reranker_id is not None:
        state.served[settings.reranker_id] = Task.RERANK
    metrics = Metrics()
    preloaded = embedder is not None or reranker is not None
    if preloaded and (
        (embedder is None) != (settings.embedder is None) or (reranker is None) != (settings.reranker is None)
    ):
        raise ValueError(
            "the models handed to create_app must be the ones the settings name (embedder / reranker)"
        )

    if settings.index is not None:  # opened now, so a bad directory is a start-up error
        from embedforge.index import Index

        state.index = Index.open(settings.index, device=settings.device, threads=settings.threads)

    def share_index_model(served: Embedder | None) -> None:
        """The index searches with the served embedder when it is the model that built it."""
        if state.index is not None and served is not None:
            if served.fingerprint == state.index.manifest.fingerprint:
                state.index = type(state.index).open(state.index.dir, served)

    def load() -> None:
        try:
            models = load_models(settings)
            share_index_model(models[0])
            state.engine = build_engine(settings, metrics, *models)
            logger.info("models loaded: %s", ", ".join(state.served))
        except BaseException as exc:  # noqa: BLE001 - reported through /health, the log and the callback
            logger.exception("loading the models failed")
            state.load_error = exc
            if on_load_error is not None:
                on_load_error(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if preloaded:
            share_index_model(embedder)
            state.engine = build_engine(settings, metrics, embedder, reranker)
        else:
            threading.Thread(target=load, name="embedforge-load", daemon=True).start()
        yield
        if state.engine is not None:  # finish queued work, then stop the workers
            await asyncio.to_thread(state.engine.close, settings.graceful_timeout_s)

    app = FastAPI(
        title="embedforge",
        version="0.1.0",
        summary="OpenAI- and Cohere-compatible embeddings and rerank for Qwen3 Embedding models",
        lifespan=lifespan,
    )
    app.state.server = state
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    # Client dialects first: TEI's /rerank (a `texts` body) shares its path with the v1 alias.
    app.include_router(tei.router)
    app.include_router(cohere.router)
    for module in (embeddings, rerank, models, health, tokenize, search, playground):
        app.include_router(module.router)
    app.include_router(metrics_router)
    # Outermost first: count every request; answer every error with JSON (GuardMiddleware); check
    # the API key from the headers; refuse an oversized body; then parse and route.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, render_by_path=_dialect_renderers())
    app.add_middleware(GuardMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(playground.ServerTimingMiddleware)  # server-side latency of every response
    return app


__all__ = ["create_app", "load_models"]
