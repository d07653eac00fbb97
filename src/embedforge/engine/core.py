"""The serving engine: models + queues + dynamic batching, with no web server and no HTTP.

Concurrent requests are queued per model and merged into token-budget batches that go through the
library's own ``Embedder.encode_ids`` / ``Reranker.score_ids``: the result of a merged batch is
what those calls return on the merged inputs. Embedding requests that ask for different
Matryoshka dimensions share a batch but get one ``encode_ids`` call per dimension; rerank requests
are scored with one group per request (one query, as ``Reranker.score`` groups them). A request
served alone equals ``Embedder.encode`` / ``Reranker.score`` bit for bit (a rerank larger than one
sub-batch: to float32 rounding); inside a merged batch it can differ from that by float32 rounding
(~1e-7), because padding and batch shapes change the order of the CPU kernels' sums.

Tokenizing happens in each model's worker thread, so a tokenizer is never used by two engine
threads. A future returned by ``submit_*`` can be cancelled until its result is set: a cancelled
request still queued is skipped, and a running batch whose requests were all cancelled stops at
its next sub-batch (``Engine.stats()`` counts both). ``asyncio`` callers that are cancelled
cancel the request too (``asyncio.wrap_future`` forwards the cancellation).

Example (no server)::

    engine = Engine(embedder=Embedder.from_pretrained(path))
    out = engine.embed(["a text", "another"], dim=256)     # EmbedOutput(embeddings (2, 256), tokens)
    engine.close()
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from embedforge.engine.batcher import BatchQueue, BatchStats, Job, QueueStats, StepStats
from embedforge.engine.errors import EngineError, ErrorKind
from embedforge.engine.ops import EmbedderOps, RerankerOps
from embedforge.engine.tasks import (
    EmbedOutput,
    EmbedTask,
    RerankOutput,
    RerankTask,
    Side,
    check_texts_unicode,
    check_token_ids,
    check_unicode,
    embed_task,
)
from embedforge.inputs import check_dim

if TYPE_CHECKING:  # the engine only calls the models
    from embedforge import Embedder, Reranker


def _len_of_payload(job: Job) -> int:
    return len(job.payload)


class Engine:
    """One queue and worker thread per model; thread-safe ``submit_*``; blocking and async helpers."""

    def __init__(
        self,
        embedder: Embedder | None = None,
        reranker: Reranker | None = None,
        *,
        max_batch_tokens: int = 16384,
        max_queue: int = 256,
        batch_wait_ms: float = 0.0,
        dynamic_batching: bool = True,
        retry_after_s: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_step: Callable[[StepStats], None] | None = None,
    ) -> None:
        if embedder is None and reranker is None:
            raise ValueError("an Engine needs an embedder, a reranker or both")
        self.embedder, self.reranker = embedder, reranker
        common: dict[str, Any] = dict(
            max_tokens=max_batch_tokens,
            max_queue=max_queue,
            wait_s=batch_wait_ms / 1000.0,
            merge=dynamic_batching,
            retry_after_s=retry_after_s,
            on_batch=on_batch,
            on_step=on_step,
            count=_len_of_payload,
        )
        self._embed_q: BatchQueue | None = None
        self._rerank_q: BatchQueue | None = None
        self._vocab_size = 0
        if embedder is not None:
            self._vocab_size = embedder.vocab_size
            embed_ops = EmbedderOps(embedder, max_batch_tokens)
            self._embed_q = BatchQueue("embedder", prepare=embed_ops.prepare, plan=embed_ops.plan, **common)
        if reranker is not None:
            rerank_ops = RerankerOps(reranker, max_batch_tokens)
            self._rerank_q = BatchQueue(
                "reranker", prepare=rerank_ops.prepare, plan=rerank_ops.plan, **common
            )

    @property
    def _queues(self) -> list[BatchQueue]:
        return [q for q in (self._embed_q, self._rerank_q) if q is not None]

    # --- embeddings ----------------------------------------------------------------------------
    def side_prompt(self, side: Side | None = None, instruction: str | None = None) -> str:
        """The prompt an embedding input of ``side`` gets: the library's one rule
        (:func:`embedforge.prompts.side_prompt`) over the served checkpoint's prompts."""
        if self.embedder is None:
            raise EngineError(
                ErrorKind.MODEL_NOT_FOUND, "this engine serves no embedding model", param="model"
            )
        try:
            return self.embedder.side_prompt(side, instruction)
        except (TypeError, ValueError) as exc:
            raise EngineError(
                ErrorKind.VALIDATION,
                str(exc),
                param="instruction" if instruction is not None else "input_type",
            ) from None

    def submit_embed(self, task: EmbedTask) -> Future:
        """Queue ``task``; the future gives an :class:`EmbedOutput`. Raises :class:`EngineError`."""
        if self._embed_q is None or self.embedder is None:
            raise EngineError(
                ErrorKind.MODEL_NOT_FOUND, "this engine serves no embedding model", param="model"
            )
        if (task.texts is None) == (task.ids is None):
            raise ValueError("an EmbedTask holds either texts or ids")
        if len(task) == 0:
            raise EngineError(ErrorKind.VALIDATION, "no inputs given", param="input")
        if task.texts is not None:
            check_texts_unicode(task.texts, "input")
        if task.instruction is not None:
            check_unicode(task.instruction, "instruction")
        try:
            check_dim(task.dim, self.embedder.hidden_size)
        except ValueError as exc:
            raise EngineError(ErrorKind.INVALID_INPUT, f"dimensions: {exc}", param="dimensions") from None
        if task.ids is not None:
            check_token_ids(task.ids, self._vocab_size)
        if task.prompt is None:
            task = dataclasses.replace(task, prompt=self.side_prompt(task.side, task.instruction))
        return self._embed_q.submit(Job(task))

    def embed(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        prompt: str | None = None,
        side: Side | None = None,
        instruction: str | None = None,
        dim: int | None = None,
        truncate: bool = True,
    ) -> EmbedOutput:
        """Blocking: embed texts (or token-id lists) through the queue."""
        task = embed_task(inputs, prompt, dim, truncate, side, instruction)
        return self.submit_embed(task).result()

    async def aembed(self, task: EmbedTask) -> EmbedOutput:
        """Await ``task``; cancelling the awaiting coroutine cancels the request."""
        return await asyncio.wrap_future(self.submit_embed(task))

    # --- rerank --------------------------------------------------------------------------------
    def submit_rerank(self, task: RerankTask) -> Future:
        """Queue ``task``; the future gives a :class:`RerankOutput`. Raises :class:`EngineError`."""
        if self._rerank_q is None:
            raise EngineError(ErrorKind.MODEL_NOT_FOUND, "this engine serves no reranker", param="model")
        if not task.documents:
            raise EngineError(ErrorKind.VALIDATION, "no documents given", param="documents")
        if task.top_n is not None and (isinstance(task.top_n, bool) or task.top_n < 1):
            raise EngineError(ErrorKind.VALIDATION, f"top_n must be >= 1, got {task.top_n!r}", param="top_n")
        check_unicode(task.query, "query")
        check_texts_unicode(task.documents, "documents")
        if task.instruction is not None:
            check_unicode(task.instruction, "instruction")
        return self._rerank_q.submit(Job(task))

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        truncate: bool = True,
        top_n: int | None = None,
    ) -> RerankOutput:
        """Blocking: score ``documents`` against ``query`` through the queue."""
        return self.submit_rerank(RerankTask(query, list(documents), instruction, truncate, top_n)).result()

    async def arerank(self, task: RerankTask) -> RerankOutput:
        """Await ``task``; cancelling the awaiting coroutine cancels the request."""
        return await asyncio.wrap_future(self.submit_rerank(task))

    # --- state ---------------------------------------------------------------------------------
    def add_observer(
        self,
        *,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_step: Callable[[StepStats], None] | None = None,
    ) -> None:
        """Call ``on_batch`` after every finished batch and ``on_step`` after every model call
        (in the worker threads; keep them quick)."""
        for q in self._queues:
            if on_batch is not None:
                q.on_batch.append(on_batch)
            if on_step is not None:
                q.on_step.append(on_step)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the workers from taking new requests while inside (see ``BatchQueue.hold``)."""
        with ExitStack() as stack:
            for q in self._queues:
                stack.enter_context(q.hold())
            yield

    def queue_depths(self) -> dict[str, int]:
        return {q.name: q.depth() for q in self._queues}

    def stats(self) -> dict[str, QueueStats]:
        """Per queue (``"embedder"``, ``"reranker"``): requests submitted, completed, failed,
        cancelled (skipped while queued / stopped while running) and model calls run or skipped."""
        return {q.name: q.stats() for q in self._queues}

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish queued ones, stop the workers."""
        for q in self._queues:
            q.close(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Engine"]
