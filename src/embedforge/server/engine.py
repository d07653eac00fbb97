"""The serving engine: models + queues + dynamic batching, usable without any web server.

Concurrent requests are queued per model and merged into token-budget batches that go through the
library's own ``Embedder.encode_ids`` / ``Reranker.score_ids``: the served result of a merged batch
is exactly what those calls return on the merged inputs. Embedding requests that ask for different
Matryoshka dimensions share a batch but get one ``encode_ids`` call per dimension; rerank requests
are scored in one ``score_ids`` call with one group per request (one query, as ``Reranker.score``
groups them). A request served alone equals ``Embedder.encode`` / ``Reranker.score`` bit for bit;
inside a merged batch it can differ from that by float32 rounding (~1e-7), because padding and
batch shapes change the order of the CPU kernels' sums.

Tokenizing happens in each model's worker thread, so a tokenizer is never used by two threads.

Example (no server)::

    engine = Engine(embedder=Embedder.from_pretrained(path))
    out = engine.embed(["a text", "another"], dim=256)     # EmbedOutput(embeddings (2, 256), tokens)
    engine.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from embedforge.inputs import check_dim
from embedforge.prompts import DEFAULT_RERANK_INSTRUCTION, format_rerank_pair
from embedforge.server.batcher import BatchQueue, BatchStats, Job
from embedforge.server.errors import ErrorKind, ServeError

if TYPE_CHECKING:  # the core is imported by the app; the engine only calls it
    from embedforge import Embedder, Reranker


# --- requests and results ------------------------------------------------------------------------
@dataclass
class EmbedTask:
    """Texts or already-tokenized texts (token ids, no special tokens) to embed."""

    texts: list[str] | None = None
    ids: list[list[int]] | None = None
    prompt: str = ""
    dim: int | None = None
    truncate: bool = True

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.ids or [])


@dataclass
class EmbedOutput:
    embeddings: np.ndarray  # (n, dim) float32, input order
    tokens: int  # tokens fed to the model (prompt and end token included)


@dataclass
class RerankTask:
    query: str
    documents: list[str]
    instruction: str | None = None
    truncate: bool = True

    def __len__(self) -> int:
        return len(self.documents)


@dataclass
class RerankOutput:
    scores: np.ndarray  # (n_documents,) float32 in [0, 1], input order
    tokens: int


# --- helpers over the core models ----------------------------------------------------------------
def _vocab_size(model) -> int:
    return int(model.get_input_embeddings().num_embeddings)


def check_token_ids(ids: Sequence[Sequence[int]], vocab_size: int) -> None:
    """Every id must index the model's embedding table."""
    for i, row in enumerate(ids):
        if not row:
            raise ServeError(ErrorKind.INVALID_INPUT, f"input[{i}] is an empty token list", param="input")
        bad = next((t for t in row if t < 0 or t >= vocab_size), None)
        if bad is not None:
            raise ServeError(
                ErrorKind.INVALID_INPUT,
                f"input[{i}] holds token id {bad}, outside this model's vocabulary [0, {vocab_size})",
                param="input",
            )


def _too_long(index: int, n: int, limit: int, what: str, param: str) -> ServeError:
    return ServeError(
        ErrorKind.INVALID_INPUT,
        f"{what}[{index}] is {n} tokens long, over this model's limit of {limit}; shorten it or send truncate=true",
        param=param,
    )


class _EmbedderOps:
    """How the engine tokenizes and computes with an :class:`Embedder` (all in the worker thread,
    so the tokenizer is never used from two threads at once)."""

    def __init__(self, embedder: Embedder, max_batch_tokens: int) -> None:
        self.model = embedder
        self.max_batch_tokens = max_batch_tokens
        self.vocab_size = _vocab_size(embedder.model)
        # Tokens the embedder adds around a text: <|endoftext|> for last-token models, [CLS]/[SEP] for encoders.
        self.added = len(embedder.finalize_ids([[]])[0])

    def _raw(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of texts without special tokens and without truncation."""
        return [list(x) for x in self.model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def _check_lengths(self, raw: Sequence[Sequence[int]]) -> None:
        limit = self.model.max_length
        for i, x in enumerate(raw):
            if len(x) + self.added > limit:
                raise _too_long(i, len(x) + self.added, limit, "input", "input")

    def prepare(self, job: Job) -> None:
        task: EmbedTask = job.payload
        if task.texts is not None:
            if not task.truncate:
                self._check_lengths(self._raw([task.prompt + t for t in task.texts]))
            ids = self.model.tokenize(task.texts, prompt=task.prompt)  # exactly what encode() feeds the model
        else:
            # Token ids are text already tokenized: the prompt's ids go first, then the embedder's
            # own truncation and end token (Embedder.finalize_ids). Note that the prompt and the
            # text tokenized separately can differ from tokenizing them joined at the boundary.
            assert task.ids is not None
            prompt_ids = self._raw([task.prompt])[0] if task.prompt else []
            raw = [prompt_ids + x for x in task.ids]
            if not task.truncate:  # a trailing end token is kept, not doubled (finalize_ids)
                eos = self.model.end_token_id
                self._check_lengths([x[:-1] if eos is not None and x and x[-1] == eos else x for x in raw])
            ids = self.model.finalize_ids(raw)
        job.prepared = ids
        job.n_tokens = sum(len(x) for x in ids)

    def run(self, jobs: list[Job]) -> list[EmbedOutput]:
        results: list[EmbedOutput | None] = [None] * len(jobs)
        by_dim: dict[int | None, list[int]] = {}
        for i, job in enumerate(jobs):
            by_dim.setdefault(job.payload.dim, []).append(i)
        for dim, members in by_dim.items():
            merged = [x for i in members for x in jobs[i].prepared]
            out = self.model.encode_ids(
                merged, dim=dim, batch_tokens=self.max_batch_tokens
            )  # (n_merged, dim)
            start = 0
            for i in members:
                n = len(jobs[i].prepared)
                results[i] = EmbedOutput(np.ascontiguousarray(out[start : start + n]), jobs[i].n_tokens)
                start += n
        return [r for r in results if r is not None]


class _RerankerOps:
    """How the engine tokenizes and scores with a :class:`Reranker` (all in the worker thread)."""

    def __init__(self, reranker: Reranker, max_batch_tokens: int) -> None:
        self.model = reranker
        self.max_batch_tokens = max_batch_tokens
        self.template = len(reranker.prefix_ids) + len(reranker.suffix_ids)

    def _check_lengths(self, task: RerankTask) -> None:
        instruction = DEFAULT_RERANK_INSTRUCTION if task.instruction is None else task.instruction
        texts = [format_rerank_pair(task.query, d, instruction) for d in task.documents]
        limit = self.model.max_length
        for i, x in enumerate(self.model.tokenizer(texts, add_special_tokens=False)["input_ids"]):
            if len(x) + self.template > limit:
                raise _too_long(i, len(x) + self.template, limit, "documents", "documents")

    def prepare(self, job: Job) -> None:
        task: RerankTask = job.payload
        if not task.truncate:
            self._check_lengths(task)
        ids = self.model.tokenize_pairs([(task.query, d) for d in task.documents], task.instruction)
        job.prepared = ids
        job.n_tokens = sum(len(x) for x in ids)

    def run(self, jobs: list[Job]) -> list[RerankOutput]:
        merged = [x for job in jobs for x in job.prepared]
        groups, start = [], 0
        for job in jobs:  # one group per request (one query): the grouping Reranker.score uses
            groups.append(range(start, start + len(job.prepared)))
            start += len(job.prepared)
        scores = self.model.score_ids(
            merged, groups=groups, batch_tokens=self.max_batch_tokens
        )  # (n_merged,)
        return [
            RerankOutput(np.ascontiguousarray(scores[g.start : g.stop]), job.n_tokens)
            for job, g in zip(jobs, groups, strict=True)
        ]


# --- the engine ----------------------------------------------------------------------------------
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
            count=len_of_payload,
        )
        self._embed_q: BatchQueue | None = None
        self._rerank_q: BatchQueue | None = None
        self._embed_ops: _EmbedderOps | None = None
        if embedder is not None:
            self._embed_ops = _EmbedderOps(embedder, max_batch_tokens)
            self._embed_q = BatchQueue(
                "embedder", prepare=self._embed_ops.prepare, run=self._embed_ops.run, **common
            )
        if reranker is not None:
            ops = _RerankerOps(reranker, max_batch_tokens)
            self._rerank_q = BatchQueue("reranker", prepare=ops.prepare, run=ops.run, **common)

    # --- embeddings ----------------------------------------------------------------------------
    def submit_embed(self, task: EmbedTask) -> Future:
        """Queue ``task``; the future gives an :class:`EmbedOutput`. Raises :class:`ServeError`."""
        if self._embed_q is None or self._embed_ops is None or self.embedder is None:
            raise ServeError(
                ErrorKind.MODEL_NOT_FOUND, "this engine serves no embedding model", param="model"
            )
        if (task.texts is None) == (task.ids is None):
            raise ValueError("an EmbedTask holds either texts or ids")
        if len(task) == 0:
            raise ServeError(ErrorKind.VALIDATION, "no inputs given", param="input")
        try:
            check_dim(task.dim, self.embedder.hidden_size)
        except ValueError as exc:
            raise ServeError(ErrorKind.INVALID_INPUT, f"dimensions: {exc}", param="dimensions") from None
        if task.ids is not None:
            check_token_ids(task.ids, self._embed_ops.vocab_size)
        return self._embed_q.submit(Job(task))

    def embed(
        self,
        inputs: Sequence[str] | Sequence[Sequence[int]],
        *,
        prompt: str = "",
        dim: int | None = None,
        truncate: bool = True,
    ) -> EmbedOutput:
        """Blocking: embed texts (or token-id lists) through the queue."""
        return self.submit_embed(_embed_task(inputs, prompt, dim, truncate)).result()

    async def aembed(self, task: EmbedTask) -> EmbedOutput:
        return await asyncio.wrap_future(self.submit_embed(task))

    # --- rerank --------------------------------------------------------------------------------
    def submit_rerank(self, task: RerankTask) -> Future:
        """Queue ``task``; the future gives a :class:`RerankOutput`. Raises :class:`ServeError`."""
        if self._rerank_q is None:
            raise ServeError(ErrorKind.MODEL_NOT_FOUND, "this engine serves no reranker", param="model")
        if not task.documents:
            raise ServeError(ErrorKind.VALIDATION, "no documents given", param="documents")
        return self._rerank_q.submit(Job(task))

    def rerank(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None, truncate: bool = True
    ) -> RerankOutput:
        """Blocking: score ``documents`` against ``query`` through the queue."""
        return self.submit_rerank(RerankTask(query, list(documents), instruction, truncate)).result()

    async def arerank(self, task: RerankTask) -> RerankOutput:
        return await asyncio.wrap_future(self.submit_rerank(task))

    # --- state ---------------------------------------------------------------------------------
    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the workers from taking new requests while inside (see ``BatchQueue.hold``)."""
        with ExitStack() as stack:
            for q in (self._embed_q, self._rerank_q):
                if q is not None:
                    stack.enter_context(q.hold())
            yield

    def queue_depths(self) -> dict[str, int]:
        return {q.name: q.depth() for q in (self._embed_q, self._rerank_q) if q is not None}

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish queued ones, stop the workers."""
        for q in (self._embed_q, self._rerank_q):
            if q is not None:
                q.close(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def len_of_payload(job: Job) -> int:
    return len(job.payload)


def _embed_task(
    inputs: Sequence[str] | Sequence[Sequence[int]], prompt: str, dim: int | None, truncate: bool
) -> EmbedTask:
    items = list(inputs)
    if items and all(isinstance(x, str) for x in items):
        return EmbedTask(texts=[str(x) for x in items], prompt=prompt, dim=dim, truncate=truncate)
    if items and all(not isinstance(x, str) for x in items):
        return EmbedTask(ids=[[int(t) for t in x] for x in items], prompt=prompt, dim=dim, truncate=truncate)
    raise ValueError("inputs must be a non-empty list of texts or of token-id lists, not a mix")


__all__ = ["EmbedOutput", "EmbedTask", "Engine", "RerankOutput", "RerankTask", "check_token_ids"]
