"""A bounded request queue with one worker thread that merges requests into token-budget batches.

It knows nothing of models or transports. A job is prepared (tokenized, checked) by ``prepare``
in the worker thread, which sets its token count; consecutive prepared jobs are merged while
their tokens fit the budget; ``plan`` turns a merged batch into :class:`Work`: model calls
(*steps*, one per sub-batch) and a ``collect`` that builds each job's result. A job that fails to
prepare fails alone; a batch that fails fails its own jobs only. Results travel back through
:class:`concurrent.futures.Future`, which asyncio code awaits with ``asyncio.wrap_future``.

Abandoned work: a job's future stays cancellable until its result is set. A cancelled job still
in the queue is skipped (and frees its queue slot); a step whose rows all belong to cancelled
jobs is skipped, so a running batch whose callers all left stops at the next step boundary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from embedforge.engine.errors import EngineError, ErrorKind

logger = logging.getLogger("embedforge.engine")


@dataclass(eq=False)
class Job:
    """One request: its payload, its future, and what preparing it produced."""

    payload: Any
    future: Future = field(default_factory=Future)
    n_tokens: int = 0
    prepared: Any = None


@dataclass(frozen=True)
class Step:
    """One model call of a batch: ``run()`` computes rows owned by the jobs at ``owners``
    (positions in the batch)."""

    owners: frozenset[int]
    run: Callable[[], None]


@dataclass(frozen=True)
class Work:
    """A merged batch as model calls; ``collect()`` returns one result per job, in order, once
    the steps have run (entries of cancelled jobs are ignored)."""

    steps: list[Step]
    collect: Callable[[], list[Any]]


@dataclass(frozen=True)
class BatchStats:
    """Figures of one merged batch (for metrics)."""

    queue: str
    requests: int
    inputs: int
    tokens: int
    seconds: float


@dataclass(frozen=True)
class StepStats:
    """Progress of a running batch: ``done`` of ``total`` steps have run (for observers)."""

    queue: str
    done: int
    total: int
    requests: int


@dataclass
class QueueStats:
    """Counts since the queue started (a snapshot; see :meth:`BatchQueue.stats`)."""

    submitted: int = 0
    completed: int = 0  # results delivered
    failed: int = 0  # errors delivered (bad input, model errors)
    cancelled: int = 0  # futures cancelled by their callers, wherever the job was
    skipped_queued: int = 0  # cancelled before it started: no model work at all
    stopped_running: int = 0  # cancelled while its batch ran: stopped at a step boundary
    steps_run: int = 0
    steps_skipped: int = 0  # model calls not made because every owner had been cancelled


J = TypeVar("J", bound=Job)


class BatchQueue(Generic[J]):
    """Bounded FIFO of jobs served by one worker thread.

    ``prepare(job)`` fills ``job.prepared`` / ``job.n_tokens`` and may raise :class:`EngineError`;
    ``plan(jobs)`` returns the batch's :class:`Work`; ``count(job)`` gives the job's number of
    inputs (for metrics). With ``merge=False`` every job runs alone (batch-of-one serving, the
    baseline of the benchmark).
    """

    def __init__(
        self,
        name: str,
        *,
        prepare: Callable[[J], None],
        plan: Callable[[list[J]], Work],
        count: Callable[[J], int],
        max_tokens: int,
        max_queue: int,
        wait_s: float = 0.0,
        merge: bool = True,
        retry_after_s: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_step: Callable[[StepStats], None] | None = None,
    ) -> None:
        if max_tokens < 1 or max_queue < 1:
            raise ValueError(f"max_tokens and max_queue must be >= 1, got {max_tokens} and {max_queue}")
        self.name = name
        self._prepare, self._plan, self._count = prepare, plan, count
        self.max_tokens, self.max_queue, self.wait_s, self.merge = max_tokens, max_queue, wait_s, merge
        self.retry_after_s = retry_after_s
        self.on_batch: list[Callable[[BatchStats], None]] = [on_batch] if on_batch else []
        self.on_step: list[Callable[[StepStats], None]] = [on_step] if on_step else []
        self._pending: deque[J] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._held = 0
        self._stats = QueueStats()
        self._stats_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"embedforge-{name}", daemon=True)
        self._thread.start()

    # --- producer side -------------------------------------------------------------------------
    def depth(self) -> int:
        """Requests waiting (not yet taken by the worker)."""
        return len(self._pending)

    def stats(self) -> QueueStats:
        with self._stats_lock:
            return QueueStats(**vars(self._stats))

    def _count_stat(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            setattr(self._stats, name, getattr(self._stats, name) + n)

    def _on_done(self, future: Future) -> None:
        if future.cancelled():
            self._count_stat("cancelled")

    def submit(self, job: J) -> Future:
        """Queue ``job``; raise ``QUEUE_FULL`` when ``max_queue`` live requests wait already."""
        with self._cond:
            if self._closing:
                raise EngineError(
                    ErrorKind.SHUTTING_DOWN, "the engine is shutting down", retry_after=self.retry_after_s
                )
            if len(self._pending) >= self.max_queue:  # abandoned requests give their slots back
                live = deque(j for j in self._pending if not j.future.cancelled())
                self._count_stat("skipped_queued", len(self._pending) - len(live))
                self._pending = live
            if len(self._pending) >= self.max_queue:
                raise EngineError(
                    ErrorKind.QUEUE_FULL,
                    f"the {self.name} queue is full ({self.max_queue} requests waiting); retry later",
                    retry_after=self.retry_after_s,
                )
            self._pending.append(job)
            self._cond.notify()
        self._count_stat("submitted")
        job.future.add_done_callback(self._on_done)
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
        """Prepare ``job``; False when it was cancelled or failed (its future is then done).

        The future is deliberately not marked running: it stays cancellable until its result
        is set, which is what lets a caller abandon work that has already started."""
        if job.future.cancelled():
            self._count_stat("skipped_queued")
            return False
        try:
            self._prepare(job)
        except EngineError as err:
            self._fail(job, err)
            return False
        except Exception as err:  # noqa: BLE001 - surfaces as an internal error for this job only
            logger.exception("preparing a %s request failed", self.name)
            self._fail(job, err)
            return False
        return True

    def _fail(self, job: J, err: BaseException) -> None:
        try:
            job.future.set_exception(err)
            self._count_stat("failed")
        except InvalidStateError:  # cancelled meanwhile
            pass

    def _loop(self) -> None:
        carry: J | None = None
        while True:
            if carry is not None:  # already prepared
                first, carry = carry, None
            else:
                taken = self._wait_first()
                if taken is None:
                    return  # closing and drained
                if not self._ready(taken):
                    continue
                first = taken
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

    def _run_steps(self, batch: list[J], work: Work) -> None:
        done = 0
        for step in work.steps:
            if all(batch[i].future.cancelled() for i in step.owners):
                self._count_stat("steps_skipped")
                continue
            step.run()
            done += 1
            self._count_stat("steps_run")
            for callback in self.on_step:
                callback(StepStats(self.name, done, len(work.steps), len(batch)))

    def _execute(self, batch: list[J], tokens: int) -> None:
        start = time.perf_counter()
        try:
            work = self._plan(batch)
            self._run_steps(batch, work)
            live = [not job.future.cancelled() for job in batch]
            results = work.collect() if any(live) else [None] * len(batch)
        except Exception as err:  # noqa: BLE001 - routed to the batch's own requests
            if not isinstance(err, EngineError):
                logger.exception("a %s batch of %d requests failed", self.name, len(batch))
            for job in batch:
                self._fail(job, err)
            return
        # batch callbacks and counters go first: a caller that holds its result always finds its
        # batch counted (resolving the futures first let a fast caller read stale stats)
        stats = BatchStats(
            self.name, len(batch), sum(self._count(j) for j in batch), tokens, time.perf_counter() - start
        )
        for callback in self.on_batch:
            callback(stats)
        for job, result in zip(batch, results, strict=True):
            if job.future.cancelled():  # its caller left while the batch ran
                self._count_stat("stopped_running")
                continue
            self._count_stat("completed")
            try:
                job.future.set_result(result)
            except InvalidStateError:  # its caller left between the check and now
                self._count_stat("completed", -1)
                self._count_stat("stopped_running")


__all__ = ["BatchQueue", "BatchStats", "Job", "QueueStats", "Step", "StepStats", "Work"]
