"""Run one task over a corpus: resumable, concurrent, with a progress bar.

The keys of a run are (document id, task, sample index, prompt version) for every document and every
sample index below ``per_doc``. Finished keys in the output are skipped; everything else (failures of an
earlier run included) is asked for again. ``concurrency`` workers pull work items from a bounded queue
fed by a producer that retrieves the candidate personas chunk by chunk, and each finished record is
appended to the store at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from embedforge.search import exact_search
from embedforge.store import EmbeddingStore, cached_encode
from embedforge.synthesis.config import SynthesisConfig
from embedforge.synthesis.llm import LLMBackend
from embedforge.synthesis.prompts import PERSONA_INSTRUCTION, PROMPT_VERSION
from embedforge.synthesis.sources import Document
from embedforge.synthesis.store import RecordKey, SynthesisStore
from embedforge.synthesis.tasks import AskStats, GenerationFailed, Task, WorkItem, get_task

if TYPE_CHECKING:
    from embedforge.embedder import Embedder


class PersonaIndex:
    """The persona library embedded once as documents; a passage, embedded as a query with
    ``PERSONA_INSTRUCTION``, retrieves its closest personas by exact dot-product search.

    With a ``cache`` (an :class:`~embedforge.store.EmbeddingStore`) the library's embeddings are kept on disk,
    keyed by the model's fingerprint and the exact persona texts, so a large library (Persona Hub holds
    hundreds of thousands) is encoded once, resumably, across runs.
    """

    def __init__(
        self,
        embedder: Embedder,
        personas: Sequence[str],
        *,
        cache: EmbeddingStore | None = None,
        show_progress: bool = False,
    ) -> None:
        if not personas:
            raise ValueError("the persona library is empty")
        self.embedder = embedder
        self.personas = list(personas)
        encoded = cached_encode(
            cache,
            model_fingerprint=embedder.fingerprint,
            max_length=embedder.max_length,
            pooling=embedder.pooling,
            texts=self.personas,
            prompt=embedder.side_prompt("document"),
            encode=lambda texts: np.asarray(embedder.encode_documents(list(texts))),
            desc="embed personas",
            show_progress=show_progress,
        )
        self.embeddings = np.array(encoded.embeddings, dtype=np.float32)  # (n_persona, d), in memory

    def closest(self, passages: Sequence[str], k: int = 5) -> list[list[str]]:
        if k > len(self.personas):
            raise ValueError(f"asked for {k} personas per passage but the library holds {len(self.personas)}")
        q = self.embedder.encode_queries(list(passages), instruction=PERSONA_INSTRUCTION)  # (n_passage, d)
        hits = exact_search(np.asarray(q), self.embeddings, k)
        return [[self.personas[j] for j in row] for row in hits.indices.tolist()]


@dataclass
class SynthesisReport:
    """What a run did. ``skipped``: finished before this run; ``retried``: failed before, asked again.

    The LLM side: ``requests`` sent and transport ``retries`` (timeouts, 429, 5xx); per step (``steps``,
    the fields of :class:`~embedforge.synthesis.tasks.StepStats`) the calls, the answers that were not
    the JSON asked for (``invalid``; ``first_try_invalid`` of the calls' first answers) and the calls
    that gave up; the tokens the endpoint reported and ``truncated`` answers (cut by ``max_tokens``);
    ``seconds``: wall time of the generation (persona retrieval included, model loading not).
    """

    task: str
    total: int
    done: int
    failed: int
    skipped: int
    retried: int
    requests: int
    retries: int
    rate_limited: int
    out: Path
    failed_out: Path
    steps: dict[str, dict[str, int]] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0

    @property
    def invalid_answers(self) -> int:
        return sum(s["invalid"] for s in self.steps.values())

    @property
    def first_try_invalid(self) -> int:
        return sum(s["first_try_invalid"] for s in self.steps.values())


def work_keys(docs: Sequence[Document], task: str, per_doc: int) -> list[tuple[Document, RecordKey]]:
    return [(d, RecordKey(d.id, task, s, PROMPT_VERSION)) for d in docs for s in range(per_doc)]


async def _run(
    task: Task,
    pending: list[tuple[Document, RecordKey]],
    backend: LLMBackend,
    store: SynthesisStore,
    cfg: SynthesisConfig,
    personas: PersonaIndex | None,
    bar: tqdm,
    counts: dict[str, int],
    chunk: int,
    ask_stats: AskStats,
) -> None:
    workers = max(1, backend.concurrency)
    queue: asyncio.Queue[WorkItem | None] = asyncio.Queue(maxsize=2 * workers)

    async def produce() -> None:
        for start in range(0, len(pending), chunk):
            part = pending[start : start + chunk]
            found: dict[str, tuple[str, ...]] = {}
            if personas is not None:
                docs = list({d.id: d for d, _ in part}.values())
                texts = [d.text[: cfg.max_passage_chars] for d in docs]
                closest = await asyncio.to_thread(personas.closest, texts, cfg.top_personas)
                found = {d.id: tuple(c) for d, c in zip(docs, closest, strict=True)}
            for doc, key in part:
                await queue.put(WorkItem(doc, key, found.get(doc.id, ())))
        for _ in range(workers):
            await queue.put(None)

    async def work() -> None:
        while (item := await queue.get()) is not None:
            try:
                record = await task.generate(item, backend, cfg, stats=ask_stats)
            except GenerationFailed as e:
                store.add_failure(item.key, str(e), model=backend.model_name)
                counts["failed"] += 1
            else:
                store.add_records([record.model_dump(mode="json")])
                counts["done"] += 1
            bar.update(1)
            bar.set_postfix(
                done=counts["done"], failed=counts["failed"], skipped=counts["skipped"], refresh=False
            )

    jobs = [asyncio.ensure_future(produce())] + [asyncio.ensure_future(work()) for _ in range(workers)]
    try:
        await asyncio.gather(*jobs)
    finally:  # a fatal error in one job stops the others; what is written stays written
        for j in jobs:
            j.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await backend.aclose()


def synthesize(
    task: str,
    docs: Sequence[Document],
    backend: LLMBackend,
    out: str | Path,
    cfg: SynthesisConfig | None = None,
    *,
    personas: PersonaIndex | None = None,
    show_progress: bool = True,
    fsync: bool = False,
    chunk: int = 256,
) -> SynthesisReport:
    """Make ``cfg.per_doc`` records of ``task`` for every document into ``out`` (resuming it)."""
    cfg = cfg or SynthesisConfig()
    runner = get_task(task)
    runner.check(cfg, docs)
    if runner.needs_personas and personas is None:
        raise ValueError(f"task {task!r} needs a PersonaIndex (an embedder over the persona library)")
    keys = work_keys(docs, runner.name, cfg.per_doc)
    with SynthesisStore(out, fsync=fsync) as store:
        before = store.previously_failed()
        pending = [(d, k) for d, k in keys if k not in store.done_keys]
        counts = {"done": 0, "failed": 0, "skipped": len(keys) - len(pending)}
        ask_stats = AskStats()
        started = time.perf_counter()
        with tqdm(
            total=len(keys),
            initial=counts["skipped"],
            disable=not show_progress,
            unit="rec",
            desc=f"synth {task}",
        ) as bar:
            bar.set_postfix(done=0, failed=0, skipped=counts["skipped"])
            asyncio.run(_run(runner, pending, backend, store, cfg, personas, bar, counts, chunk, ask_stats))
        seconds = time.perf_counter() - started
        return SynthesisReport(
            task=runner.name,
            total=len(keys),
            done=counts["done"],
            failed=counts["failed"],
            skipped=counts["skipped"],
            retried=sum(1 for _, k in pending if k in before),
            requests=backend.stats.requests,
            retries=backend.stats.retries,
            rate_limited=backend.stats.rate_limited,
            out=store.path,
            failed_out=store.failed_path,
            steps={name: asdict(st) for name, st in ask_stats.steps.items()},
            prompt_tokens=backend.stats.prompt_tokens,
            completion_tokens=backend.stats.completion_tokens,
            truncated=backend.stats.truncated,
            seconds=round(seconds, 3),
        )
