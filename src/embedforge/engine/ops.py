"""How the engine tokenizes and computes with the library's models, in each model's worker thread.

A merged batch becomes :class:`~embedforge.engine.batcher.Work`: one step per sub-batch of the
library's own planner (``batching.plan_batches``), so a batch whose callers all left stops at the
next step. Embedding steps are the very batches ``Embedder.encode_ids`` would run on the merged
inputs, so results are bit for bit those of one ``encode_ids`` call. A rerank batch that fits one
sub-batch is one ``Reranker.score_ids`` call (one group per request, as ``Reranker.score`` groups
them); a larger one is scored request by request, in sub-batches, which equals ``score_ids`` on
the whole request to float32 rounding (its shared prefix is computed once per sub-batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from embedforge.batching import plan_batches
from embedforge.engine.batcher import Job, Step, Work
from embedforge.engine.errors import EngineError, ErrorKind
from embedforge.engine.tasks import EmbedOutput, EmbedTask, RerankOutput, RerankTask
from embedforge.inputs import InputTooLongError
from embedforge.reranker import rank_order

if TYPE_CHECKING:  # the engine only calls the models
    from embedforge import Embedder, Reranker


def _too_long(exc: InputTooLongError, param: str) -> EngineError:
    return EngineError(ErrorKind.INVALID_INPUT, f"{exc}: send truncate=true to cut it", param=param)


class EmbedderOps:
    """Tokenize, check and embed with an :class:`Embedder` (worker thread only, so the
    tokenizer is never used from two engine threads at once)."""

    def __init__(self, embedder: Embedder, max_batch_tokens: int) -> None:
        self.embedder = embedder
        self.max_batch_tokens = max_batch_tokens

    def _check_lengths(self, raw: Sequence[Sequence[int]]) -> None:
        try:
            self.embedder.check_lengths(raw, "input")  # the library's rule (the end token counts once)
        except InputTooLongError as exc:
            raise _too_long(exc, "input") from None

    def prepare(self, job: Job) -> None:
        task: EmbedTask = job.payload
        prompt = task.prompt or ""
        if task.texts is not None:
            if not task.truncate:
                self._check_lengths(self.embedder.raw_ids([prompt + t for t in task.texts]))
            ids = self.embedder.tokenize(task.texts, prompt=prompt)  # exactly what encode() feeds the model
        else:
            # Token ids are text already tokenized: the prompt's ids go first, then the embedder's
            # own truncation and end token (Embedder.finalize_ids). Note that the prompt and the
            # text tokenized separately can differ from tokenizing them joined at the boundary.
            assert task.ids is not None
            prompt_ids = self.embedder.raw_ids([prompt])[0] if prompt else []
            raw = [prompt_ids + x for x in task.ids]
            if not task.truncate:  # a trailing end token is kept, not doubled (finalize_ids)
                self._check_lengths(raw)
            ids = self.embedder.finalize_ids(raw)
        job.prepared = ids
        job.n_tokens = sum(len(x) for x in ids)

    def _embed(
        self,
        merged: list[list[int]],
        owner: list[tuple[int, int]],
        batch: list[int],
        dim: int | None,
        outputs: list[np.ndarray],
    ) -> None:
        rows = self.embedder.encode_ids(
            [merged[k] for k in batch], dim=dim, batch_tokens=self.max_batch_tokens
        )
        for j, k in enumerate(batch):  # rows: (len(batch), dim)
            job, row = owner[k]
            outputs[job][row] = rows[j]

    def plan(self, jobs: list[Job]) -> Work:
        hidden = self.embedder.hidden_size
        outputs = [np.empty((len(job.prepared), job.payload.dim or hidden), dtype=np.float32) for job in jobs]
        by_dim: dict[int | None, list[int]] = {}
        for i, job in enumerate(jobs):  # one encode_ids per Matryoshka dimension
            by_dim.setdefault(job.payload.dim, []).append(i)
        steps: list[Step] = []
        for dim, members in by_dim.items():
            owner = [(i, r) for i in members for r in range(len(jobs[i].prepared))]
            merged = [jobs[i].prepared[r] for i, r in owner]
            # The batches encode_ids would cut; each run alone is that very batch (same rows, same order).
            for batch in plan_batches([len(x) for x in merged], self.max_batch_tokens).batches:
                steps.append(
                    Step(
                        frozenset(owner[k][0] for k in batch),
                        partial(self._embed, merged, owner, batch, dim, outputs),
                    )
                )
        return Work(
            steps, lambda: [EmbedOutput(out, job.n_tokens) for out, job in zip(outputs, jobs, strict=True)]
        )


class RerankerOps:
    """Tokenize, check and score with a :class:`Reranker` (worker thread only)."""

    def __init__(self, reranker: Reranker, max_batch_tokens: int) -> None:
        self.reranker = reranker
        self.max_batch_tokens = max_batch_tokens

    def _check_lengths(self, task: RerankTask) -> None:
        try:  # the library's template-length rule
            self.reranker.check_lengths(
                [(task.query, d) for d in task.documents], task.instruction, name="documents"
            )
        except InputTooLongError as exc:
            raise _too_long(exc, "documents") from None

    def prepare(self, job: Job) -> None:
        task: RerankTask = job.payload
        if not task.truncate:
            self._check_lengths(task)
        # the library's pair rule; a query cut to leave documents room is reported, not warned
        pairs = self.reranker.tokenize_pairs_with_info(
            [(task.query, d) for d in task.documents], task.instruction
        )
        job.prepared = pairs.ids
        job.n_tokens = sum(len(x) for x in pairs.ids)
        job.payload = dataclasses.replace(task, query_truncated=any(pairs.query_truncated))

    def _score(
        self, ids: list[list[int]], groups: list[range] | None, into: list[tuple[int, list[int]]], out: list
    ) -> None:
        scores = self.reranker.score_ids(
            ids, groups=groups, batch_tokens=self.max_batch_tokens
        )  # (len(ids),)
        start = 0
        for job, positions in into:
            out[job][positions] = scores[start : start + len(positions)]
            start += len(positions)

    def plan(self, jobs: list[Job]) -> Work:
        out = [np.empty(len(job.prepared), dtype=np.float32) for job in jobs]
        merged = [x for job in jobs for x in job.prepared]
        budget = self.max_batch_tokens
        steps: list[Step] = []
        if len(plan_batches([len(x) for x in merged], budget).batches) <= 1:
            groups, into, start = [], [], 0
            for i, job in enumerate(jobs):  # one group per request (one query): Reranker.score's grouping
                n = len(job.prepared)
                groups.append(range(start, start + n))
                into.append((i, list(range(n))))
                start += n
            steps.append(Step(frozenset(range(len(jobs))), partial(self._score, merged, groups, into, out)))
        else:  # request by request, one step per sub-batch, so abandoned work stops early
            for i, job in enumerate(jobs):
                ids = job.prepared
                for part in plan_batches([len(x) for x in ids], budget).batches:
                    part = sorted(part)
                    sub = [ids[k] for k in part]
                    steps.append(Step(frozenset({i}), partial(self._score, sub, None, [(i, part)], out)))

        def collect() -> list[RerankOutput]:
            return [
                RerankOutput(
                    scores, job.n_tokens, rank_order(scores, job.payload.top_n), job.payload.query_truncated
                )
                for scores, job in zip(out, jobs, strict=True)
            ]

        return Work(steps, collect)


__all__ = ["EmbedderOps", "RerankerOps"]
