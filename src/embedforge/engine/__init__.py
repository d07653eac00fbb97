"""The request-merging engine, usable without any web server (no FastAPI, no Prometheus).

``Engine`` queues embedding and rerank requests per model, merges concurrent ones into
token-budget batches run through the library's own ``Embedder`` / ``Reranker`` calls, applies
backpressure (``QUEUE_FULL``) and drops abandoned work. Errors are :class:`EngineError` with a
transport-free :class:`ErrorKind`; the HTTP server maps kinds to status codes in its one table.

Example::

    from embedforge import Embedder
    from embedforge.engine import Engine

    with Engine(embedder=Embedder.from_pretrained(path)) as engine:
        out = engine.embed(["what is gravity?"], side="query")   # EmbedOutput
"""

from embedforge.engine.batcher import BatchStats, QueueStats, StepStats
from embedforge.engine.core import Engine
from embedforge.engine.errors import EngineError, ErrorKind
from embedforge.engine.tasks import EmbedOutput, EmbedTask, RerankOutput, RerankTask, Side

__all__ = [
    "BatchStats",
    "EmbedOutput",
    "EmbedTask",
    "Engine",
    "EngineError",
    "ErrorKind",
    "QueueStats",
    "RerankOutput",
    "RerankTask",
    "Side",
    "StepStats",
]
