"""A bounded request queue with one worker thread that merges requests into token-budget batches.

It knows nothing of models or HTTP: a job is prepared (tokenized, checked) by ``prepare`` in the
worker thread, which returns its token count; consecutive prepared jobs are merged while their
tokens fit the budget; ``run`` computes a merged batch and sets each job's result. A job that
fails to prepare fails alone; a batch that fails fails its own jobs only. Results travel back
through :class:`concurrent.futures.Future`, which asyncio code awaits with ``asyncio.wrap_future``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from embedforge.server.errors import ErrorKind, ServeError

logger = logging.getLogger("embedforge.server")


@dataclass(eq=False)
class Job:
    """One request: its payload, its future, and what preparing it produced."""

    payload: Any
    future: Future = field(default_factory=Future)
    n_tokens: int = 0
    prepared: Any = None


@dataclass(frozen=True)
class BatchStats:
    """Figures of one merged batch (for metrics)."""

    queue: str
    requests: int
    inputs: int
    tokens: int
    seconds: float


J = TypeVar("J", bound=Job)


class BatchQueue(Generic[J]):
    """Bounded FIFO of jobs served by one worker thread.

    ``prepare(job)`` fills ``job.prepared`` / ``job.n_tokens`` and may raise :class:`ServeError`;
    ``run(jobs)`` computes a merged batch and returns one result per job, in order; ``count(job)``
    gives the job's number of inputs (for metrics). With ``merge=False`` every job runs alone
    (batch-of-one serving, the baseline of the benchmark).
    """

    def __init__(
        self,
        name: str,
        *,
        prepare: Callable[[J], None],
        run: Callable[[list[J]], list[Any]],
        count: Callable[[J], int],
        max_tokens: int,
        max_queue: int,
        wait_s: float = 0.0,
        merge: bool = True,
        retry_after_s: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_tokens < 1 or max_queue < 1:
            raise ValueError(f"max_tokens and max_queue must be >= 1, got {max_tokens} and {max_queue}")
        self.name = name
        self._prepare, self._run, self._count = prepare, run, count
        self.max_tokens, self.max_queue, self.wait_s, self.merge = max_tokens, max_queue, wait_s, merge
        self.retry_after_s = retry_after_s
        self.on_batch = on_batch
        self._pending: deque[J] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._held = 0
        self._thread = threading.Thread(target=self._loop, name=f"embedforge-{name}", daemon=True)
        self._thread.start()

    # --- producer side -------------------------------------------------------------------------
    def depth(self) -> int:
        """Requests waiting (not yet taken by the worker)."""
        return len(self._pending)

    def submit(self, job: J) -> Future:
        """Queue ``job``; raise ``QUEUE_FULL`` (429) when ``max_queue`` requests wait already."""
        with self._cond:
            if self._closing:
                raise ServeError(
                    ErrorKind.SHUTTING_DOWN, "the server is shutting down", retry_after=self.retry_after_s
                )
            if len(self._pending) >= self.max_queue:
                raise ServeError(
                    ErrorKind.QUEUE_FULL,
                    f"the {self.name} queue is full ({self.max_queue} requests waiting); retry later",
                    retry_after=self.retry_after_s,
                )
            self._pending.append(job)
            self._cond.notify()
        return job.future

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the worker from starting new batches while inside; jobs submitted meanwhile wait
        and are then merged in one go (maintenance, deterministic tests). Submitting still works."""
        with self._cond:
            self._held += 1
        try:
            yield
        finally:
            with self._cond:
                self._held -= 1
                self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish the queued ones, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # --- worker side ---------------------------------------------------------------------------
    def _take(self, deadline: float | None) -> J | None:
        """Next waiting job; wait until ``deadline`` (monotonic) for one, or not at all when None."""
        with self._cond:
            while not self._pending or self._held:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is None or remaining <= 0 or self._closing or self._held:
                    return None
                self._cond.wait(remaining)
            return self._pending.popleft()

    def _wait_first(self) -> J | None:
        with self._cond:
            while (not self._pending or self._held) and not self._closing:
                self._cond.wait()
            return self._pending.popleft() if self._pending else None

    def _ready(self, job: J) -> bool:
        """Claim ``job`` and prepare it; False when it was cancelled or failed (its future is set)."""
        if not job.future.set_running_or_notify_cancel():
            return False
        try:
            self._prepare(job)
        except ServeError as err:
            job.future.set_exception(err)
            return False
        except Exception as err:  # noqa: BLE001 - surfaces as a 500 for this job only, logged there
            logger.exception("preparing a %s request failed", self.name)
            job.future.set_exception(err)
            return False
        return True

    def _loop(self) -> None:
        carry: J | None = None
        while True:
            if carry is not None:  # already claimed and prepared
                first, carry = carry, None
            else:
                first = self._wait_first()
                if first is None:
                    return  # closing and drained
                if not self._ready(first):
                    continue
            batch, tokens = [first], first.n_tokens
            deadline = time.monotonic() + self.wait_s if self.wait_s > 0 else None
            while self.merge and tokens < self.max_tokens:
                job = self._take(deadline)
                if job is None:
                    break
                if not self._ready(job):
                    continue
                if tokens + job.n_tokens > self.max_tokens:
                    carry = job  # starts the next batch
                    break
                batch.append(job)
                tokens += job.n_tokens
            self._execute(batch, tokens)

    def _execute(self, batch: list[J], tokens: int) -> None:
        start = time.perf_counter()
        try:
            results = self._run(batch)
        except Exception as err:  # noqa: BLE001 - routed to the batch's own requests
            if not isinstance(err, ServeError):
                logger.exception("a %s batch of %d requests failed", self.name, len(batch))
            for job in batch:
                job.future.set_exception(err)
            return
        for job, result in zip(batch, results, strict=True):
            job.future.set_result(result)
        if self.on_batch is not None:
            self.on_batch(
                BatchStats(
                    self.name,
                    len(batch),
                    sum(self._count(j) for j in batch),
                    tokens,
                    time.perf_counter() - start,
                )
            )


__all__ = ["BatchQueue", "BatchStats", "Job"]
