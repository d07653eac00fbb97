"""The four task types of the paper's synthetic data: how one record is asked for and built.

Each task turns one (document, sample index) into one trainer-ready record, or raises
:class:`GenerationFailed` with the reason. Retrieval is the paper's two-stage, persona-driven recipe;
bitext, STS and classification use our templates (``prompts.py``).

Every LLM call goes through :func:`ask`, which names its step (``retrieval/configuration``,
``retrieval/query``, ``bitext`` ...), sends the step's JSON schema when the backend decodes under one,
asks again when the answer is not the JSON asked for, and counts what happened in :class:`StepStats`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, TypeVar

from embedforge.synthesis import prompts as P
from embedforge.synthesis.config import DIFFICULTY_NAMES, Choice, SynthesisConfig
from embedforge.synthesis.llm import LLMBackend, LLMError, LLMFatalError, OutputSchema, accepts_schema
from embedforge.synthesis.schemas import (
    BitextOutput,
    ClassificationOutput,
    ConfigurationOutput,
    InvalidOutput,
    LLMOutput,
    Provenance,
    QueryOutput,
    STSOutput,
    SynthRecord,
    json_schema,
    parse_output,
)
from embedforge.synthesis.sources import Document
from embedforge.synthesis.store import RecordKey

T = TypeVar("T", bound=LLMOutput)


class GenerationFailed(Exception):
    """One record could not be made; the run records the reason and goes on."""


@dataclass(frozen=True)
class WorkItem:
    doc: Document
    key: RecordKey
    personas: tuple[str, ...] = ()  # the candidates for the configuration prompt (retrieval only)


RAW_REPLY_CHARS = 300  # how much of a bad reply an error message shows


@dataclass
class StepStats:
    """What the LLM calls of one step did. ``first_try_invalid``: calls whose first answer did not parse."""

    calls: int = 0  # ask() calls
    answers: int = 0  # answers received (first tries and re-asks)
    invalid: int = 0  # answers that were not the JSON asked for (empty ones included)
    empty: int = 0  # answers with no text at all
    first_try_invalid: int = 0
    failed: int = 0  # calls that gave up: no valid answer in max_invalid attempts, or the request failed


@dataclass
class AskStats:
    """:class:`StepStats` per step name, filled by :func:`ask` as a run goes."""

    steps: dict[str, StepStats] = field(default_factory=dict)

    def step(self, name: str) -> StepStats:
        return self.steps.setdefault(name, StepStats())


def _shown(text: str) -> str:
    """A reply as an error message shows it: its length and its start."""
    cut = text[:RAW_REPLY_CHARS]
    return f"({len(text)} chars) {cut!r}" + (" ..." if len(text) > RAW_REPLY_CHARS else "")


async def ask(
    backend: LLMBackend,
    prompt: str,
    schema: type[T],
    cfg: SynthesisConfig,
    *,
    step: str | None = None,
    output_schema: OutputSchema | None = None,
    stats: AskStats | None = None,
) -> T:
    """One prompt as a user message; an answer that fails to parse is asked again, ``max_invalid`` times.

    ``step`` names the call in errors and in ``stats`` (default: the schema's name). When the backend
    decodes under a JSON schema, ``output_schema`` (default: the schema of ``schema``) goes along. After
    the last attempt :class:`GenerationFailed` names the step, the reason and the raw reply (cut).
    """
    step = step or schema.__name__
    st = (stats or AskStats()).step(step)
    st.calls += 1
    kwargs: dict = {}
    if accepts_schema(backend):
        kwargs["output_schema"] = output_schema or OutputSchema(schema.__name__, json_schema(schema))
    reason, text = "", ""
    for attempt in range(cfg.max_invalid):
        try:
            text = await backend.complete(
                [{"role": "user", "content": prompt}],
                temperature=cfg.temperature,
                max_tokens=cfg.max_tokens,
                **kwargs,
            )
        except LLMFatalError:
            raise
        except LLMError as e:
            st.failed += 1
            raise GenerationFailed(f"{step}: LLM request failed: {e}") from e
        st.answers += 1
        try:
            if not text.strip():
                st.empty += 1
                raise InvalidOutput("the reply is empty")
            return parse_output(text, schema)
        except InvalidOutput as e:
            st.invalid += 1
            st.first_try_invalid += attempt == 0
            reason = str(e)
    st.failed += 1
    raise GenerationFailed(
        f"{step}: no valid {schema.__name__} in {cfg.max_invalid} attempts: {reason}; last reply {_shown(text)}"
    )


def _provenance(item: WorkItem, cfg: SynthesisConfig, backend: LLMBackend, **extra: object) -> Provenance:
    return Provenance(**item.key.as_dict(), model=backend.model_name, seed=cfg.seed, **extra)  # type: ignore[arg-type]


def _difficulty(cfg: SynthesisConfig, rng: random.Random) -> str:
    return (cfg.difficulties or Choice(DIFFICULTY_NAMES, (1.0,) * len(DIFFICULTY_NAMES))).draw(rng)


class Task(Protocol):
    name: ClassVar[str]
    needs_personas: ClassVar[bool]

    def check(self, cfg: SynthesisConfig, docs: Sequence[Document]) -> None:
        """Raise ValueError, before any request, for settings this task cannot work with."""
        ...

    async def generate(
        self, item: WorkItem, backend: LLMBackend, cfg: SynthesisConfig, *, stats: AskStats | None = None
    ) -> SynthRecord: ...


class RetrievalTask:
    """Stage 1 picks a persona among the five closest, a question type and a difficulty; stage 2 writes
    the query with the length and language drawn here (type and difficulty too when configured)."""

    name = "retrieval"
    needs_personas = True

    def check(self, cfg: SynthesisConfig, docs: Sequence[Document]) -> None:
        return None

    async def generate(
        self, item: WorkItem, backend: LLMBackend, cfg: SynthesisConfig, *, stats: AskStats | None = None
    ) -> SynthRecord:
        if not item.personas:
            raise ValueError("retrieval needs candidate personas for every document")
        rng = cfg.rng(*item.key.as_dict().values())
        language = cfg.languages.draw(rng)
        length = cfg.lengths.draw(rng)
        drawn_type = cfg.question_types.draw(rng) if cfg.question_types else None
        drawn_difficulty = cfg.difficulties.draw(rng) if cfg.difficulties else None
        passage = item.doc.text[: cfg.max_passage_chars]
        corpus_language = item.doc.language or cfg.corpus_language
        candidates = list(item.personas)
        # under a schema the persona must be one of the candidates, as the prompt asks
        conf_schema = OutputSchema(
            "configuration", json_schema(ConfigurationOutput, choices={"Character": candidates})
        )
        conf = await ask(
            backend,
            P.render_configuration(passage, candidates, corpus_language),
            ConfigurationOutput,
            cfg,
            step="retrieval/configuration",
            output_schema=conf_schema,
            stats=stats,
        )
        qtype = drawn_type or conf.question_type.value
        difficulty = drawn_difficulty or conf.difficulty.value
        prompt = P.render_query(
            passage,
            conf.character,
            type=qtype,
            difficulty=difficulty,
            length=length,
            language=language,
            corpus_language=corpus_language,
        )
        out = await ask(
            backend,
            prompt,
            QueryOutput,
            cfg,
            step="retrieval/query",
            output_schema=OutputSchema("query", json_schema(QueryOutput)),
            stats=stats,
        )
        prov = _provenance(
            item,
            cfg,
            backend,
            language=language,
            corpus_language=corpus_language,
            length=length,
            persona=conf.character,
            candidates=candidates,
            question_type=qtype,
            difficulty=difficulty,
            configuration={
                "Character": conf.character,
                "Question_Type": conf.question_type.value,
                "Difficulty": conf.difficulty.value,
            },
            persona_in_candidates=conf.character in candidates,
        )
        return SynthRecord(
            instruction=P.RETRIEVAL_INSTRUCTION, query=out.query, positive=item.doc.text, provenance=prov
        )


class BitextTask:
    """A sentence of the passage in the corpus language and its translation into a drawn language."""

    name = "bitext"
    needs_personas = False

    def _targets(self, cfg: SynthesisConfig, source: str) -> Choice:
        pairs = [
            (o, w) for o, w in zip(cfg.languages.options, cfg.languages.weights, strict=True) if o != source
        ]
        if not pairs or sum(w for _, w in pairs) <= 0:
            raise ValueError(
                f"bitext needs --languages with a language other than the corpus language "
                f"({source}); got {list(cfg.languages.options)}"
            )
        return Choice(tuple(o for o, _ in pairs), tuple(w for _, w in pairs))

    def check(self, cfg: SynthesisConfig, docs: Sequence[Document]) -> None:
        for source in {d.language or cfg.corpus_language for d in docs}:
            self._targets(cfg, source)

    async def generate(
        self, item: WorkItem, backend: LLMBackend, cfg: SynthesisConfig, *, stats: AskStats | None = None
    ) -> SynthRecord:
        rng = cfg.rng(*item.key.as_dict().values())
        source = item.doc.language or cfg.corpus_language
        target = self._targets(cfg, source).draw(rng)  # check() made sure there is one
        length = cfg.lengths.draw(rng)
        prompt = P.render_bitext(
            item.doc.text[: cfg.max_passage_chars],
            source_language=source,
            target_language=target,
            length=length,
            corpus_language=source,
        )
        out = await ask(backend, prompt, BitextOutput, cfg, step="bitext", stats=stats)
        prov = _provenance(
            item, cfg, backend, language=target, length=length, source_language=source, corpus_language=source
        )
        return SynthRecord(
            instruction=P.BITEXT_INSTRUCTION, query=out.source, positive=out.target, provenance=prov
        )


class STSTask:
    """A sentence, its paraphrase (the positive) and a same-topic sentence of other meaning (a negative)."""

    name = "sts"
    needs_personas = False

    def check(self, cfg: SynthesisConfig, docs: Sequence[Document]) -> None:
        return None

    async def generate(
        self, item: WorkItem, backend: LLMBackend, cfg: SynthesisConfig, *, stats: AskStats | None = None
    ) -> SynthRecord:
        rng = cfg.rng(*item.key.as_dict().values())
        language = cfg.languages.draw(rng)
        length = cfg.lengths.draw(rng)
        difficulty = _difficulty(cfg, rng)
        corpus_language = item.doc.language or cfg.corpus_language
        prompt = P.render_sts(
            item.doc.text[: cfg.max_passage_chars],
            difficulty=difficulty,
            length=length,
            language=language,
            corpus_language=corpus_language,
        )
        out = await ask(backend, prompt, STSOutput, cfg, step="sts", stats=stats)
        prov = _provenance(
            item,
            cfg,
            backend,
            language=language,
            corpus_language=corpus_language,
            length=length,
            difficulty=difficulty,
        )
        return SynthRecord(
            instruction=P.STS_INSTRUCTION, query=out.s1, positive=out.s2, negatives=[out.s3], provenance=prov
        )


class ClassificationTask:
    """An invented classification task: the text is the query, its label the positive, the other labels
    the negatives, and the task's own description the instruction."""

    name = "classification"
    needs_personas = False

    def check(self, cfg: SynthesisConfig, docs: Sequence[Document]) -> None:
        return None

    async def generate(
        self, item: WorkItem, backend: LLMBackend, cfg: SynthesisConfig, *, stats: AskStats | None = None
    ) -> SynthRecord:
        rng = cfg.rng(*item.key.as_dict().values())
        language = cfg.languages.draw(rng)
        length = cfg.lengths.draw(rng)
        difficulty = _difficulty(cfg, rng)
        corpus_language = item.doc.language or cfg.corpus_language
        prompt = P.render_classification(
            item.doc.text[: cfg.max_passage_chars],
            difficulty=difficulty,
            length=length,
            language=language,
            corpus_language=corpus_language,
        )
        out = await ask(backend, prompt, ClassificationOutput, cfg, step="classification", stats=stats)
        prov = _provenance(
            item,
            cfg,
            backend,
            language=language,
            corpus_language=corpus_language,
            length=length,
            difficulty=difficulty,
            labels=out.labels,
        )
        negatives = [label for label in out.labels if label != out.label]
        return SynthRecord(
            instruction=out.task, query=out.text, positive=out.label, negatives=negatives, provenance=prov
        )


TASKS: dict[str, type] = {t.name: t for t in (RetrievalTask, BitextTask, STSTask, ClassificationTask)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown synthesis task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]()
