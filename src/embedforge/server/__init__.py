"""OpenAI- and Cohere-compatible HTTP serving of embedforge models (``pip install embedforge[server]``).

Command line (every flag also reads ``EMBEDFORGE_<FLAG>``, e.g. ``EMBEDFORGE_API_KEY``)::

    embedforge serve --embedder Qwen/Qwen3-Embedding-0.6B --reranker Qwen/Qwen3-Reranker-0.6B \
        --port 8000 --api-key KEY --max-batch-tokens 16384 --max-queue 256 --max-request-inputs 2048

Routes: ``POST /v1/embeddings`` (OpenAI; extensions ``input_type``, ``instruction``, ``truncate``),
``POST /v1/rerank`` and ``/rerank`` (Cohere/Jina; plus ``instruction``, ``truncate``),
``GET /v1/models``, ``GET /health`` (503 until loaded), ``GET /metrics`` (Prometheus).

In Python, ``create_app(settings)`` builds the FastAPI app (mount it, or run it with uvicorn).
The queue and dynamic batcher underneath is :class:`embedforge.engine.Engine`, usable without any
web server (and without this extra); it is re-exported here.
"""

from embedforge.engine import EmbedOutput, EmbedTask, Engine, EngineError, ErrorKind, RerankOutput, RerankTask
from embedforge.server.app import create_app
from embedforge.server.settings import ServerSettings

__all__ = [
    "EmbedOutput",
    "EmbedTask",
    "Engine",
    "EngineError",
    "ErrorKind",
    "RerankOutput",
    "RerankTask",
    "ServerSettings",
    "create_app",
]
