"""``create_app(settings) -> FastAPI``: the HTTP face of the engine.

The models load in the app's lifespan, in a background thread, so ``/health`` answers 503 until
they are ready; models already loaded can be handed in instead (embedding the server in another
app, tests). At shutdown the engine refuses new work, finishes what is queued, and stops.
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

from embedforge.server.engine import Engine
from embedforge.server.errors import install_error_handlers
from embedforge.server.limits import BodyLimitMiddleware
from embedforge.server.metrics import Metrics, MetricsMiddleware
from embedforge.server.metrics import router as metrics_router
from embedforge.server.routes import embeddings, health, models, rerank
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
        on_batch=metrics.observe_batch,
    )
    for name in engine.queue_depths():
        metrics.track_queue(name, lambda name=name: engine.queue_depths().get(name, 0))
    return engine


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

    def load() -> None:
        try:
            state.engine = build_engine(settings, metrics, *load_models(settings))
            logger.info("models loaded: %s", ", ".join(state.served))
        except BaseException as exc:  # noqa: BLE001 - reported through /health, the log and the callback
            logger.exception("loading the models failed")
            state.load_error = exc
            if on_load_error is not None:
                on_load_error(exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if preloaded:
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
    for module in (embeddings, rerank, models, health):
        app.include_router(module.router)
    app.include_router(metrics_router)
    # Outermost first: count every request (413s included), then guard the body size.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


__all__ = ["create_app", "load_models"]
