"""Settings of a synthesis run and the seeded distributions its requirements are drawn from.

Every draw for a record uses a generator seeded by (run seed, record key), so a record's requirements
do not depend on the order in which records are made, on concurrency, or on a resume.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from embedforge.synthesis.schemas import Difficulty, QuestionType

LANGUAGE_NAMES: dict[str, str] = {
    "ar": "Arabic",
    "bn": "Bengali",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "fa": "Persian",
    "fi": "Finnish",
    "fr": "French",
    "he": "Hebrew",
    "hi": "Hindi",
    "hu": "Hungarian",
    "id": "Indonesian",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "ru": "Russian",
    "sv": "Swedish",
    "sw": "Swahili",
    "th": "Thai",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "ur": "Urdu",
    "vi": "Vietnamese",
    "zh": "Chinese",
}


def language_name(code_or_name: str) -> str:
    """``"de"`` -> ``"German"``; a name (``"German"``, ``"Swiss German"``) is kept as written."""
    s = code_or_name.strip()
    if not s:
        raise ValueError("a language must be a code such as 'en' or a name such as 'English', got ''")
    if s.lower() in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[s.lower()]
    if len(s) <= 3 and s.isalpha() and s.islower():
        raise ValueError(
            f"unknown language code {s!r}; known codes: {sorted(LANGUAGE_NAMES)} (or write the name)"
        )
    return s


@dataclass(frozen=True)
class Choice:
    """A weighted choice among strings, e.g. parsed from ``"en=0.7,zh=0.3"`` or ``["en", "zh"]``."""

    options: tuple[str, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.options or len(self.options) != len(self.weights):
            raise ValueError(
                f"a choice needs options with one weight each, got {self.options} / {self.weights}"
            )
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(
                f"weights must be >= 0 with a positive sum, got {dict(zip(self.options, self.weights, strict=True))}"
            )
        if len(set(self.options)) != len(self.options):
            raise ValueError(f"options must be distinct, got {self.options}")

    @classmethod
    def parse(
        cls, spec: str | Sequence[str], *, allowed: Sequence[str] | None = None, normalise=None
    ) -> Choice:
        items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
        options, weights = [], []
        for item in (i.strip() for i in items):
            if not item:
                continue
            name, _, w = item.partition("=")
            try:
                weight = float(w) if w else 1.0
            except ValueError:
                raise ValueError(f"bad weight {w!r} in {item!r}; write NAME or NAME=WEIGHT") from None
            name = normalise(name) if normalise else name.strip()
            if allowed is not None and name not in allowed:
                raise ValueError(f"{name!r} is not one of {list(allowed)}")
            options.append(name)
            weights.append(weight)
        return cls(tuple(options), tuple(weights))

    def draw(self, rng: random.Random) -> str:
        return rng.choices(self.options, weights=self.weights, k=1)[0]


@dataclass(frozen=True)
class LengthRange:
    """Lengths in words, drawn uniformly from ``low..high`` inclusive; parsed from ``"5-20"`` or ``"12"``."""

    low: int = 5
    high: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"length range must satisfy 1 <= low <= high, got {self.low}-{self.high}")

    @classmethod
    def parse(cls, spec: str) -> LengthRange:
        lo, _, hi = spec.partition("-")
        try:
            low, high = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"bad length range {spec!r}; write LOW-HIGH (words), e.g. 5-20") from None
        return cls(low, high)

    def draw(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)


QUESTION_TYPE_NAMES = tuple(t.value for t in QuestionType)
DIFFICULTY_NAMES = tuple(d.value for d in Difficulty)


@dataclass
class SynthesisConfig:
    """What to generate and how to ask for it. Every field is validated on construction."""

    # languages of the generated text (queries, sentences), drawn per record
    languages: Choice = field(default_factory=lambda: Choice(("English",), (1.0,)))
    # the language the corpus is written in (the prompts say so)
    corpus_language: str = "English"
    # length in words asked of the generated query / sentence
    lengths: LengthRange = field(default_factory=LengthRange)
    # stage-2 question type; None keeps the one stage 1 chose (the paper's pipeline)
    question_types: Choice | None = None
    # stage-2 difficulty (and the difficulty of STS/classification); None: stage 1's choice for
    # retrieval, uniform over the three levels for the other tasks
    difficulties: Choice | None = None
    # records per document (sample indices 0..per_doc-1)
    per_doc: int = 1
    # seed of every draw (requirements, backoff jitter, local sampling)
    seed: int = 0
    # sampling temperature and answer budget of every LLM call
    temperature: float = 0.7
    max_tokens: int = 512
    # attempts per LLM call when the answer is not the JSON asked for; then the record fails
    max_invalid: int = 3
    # candidate personas retrieved per passage (the paper: 5)
    top_personas: int = 5
    # passages are cut to this many characters before they go into a prompt
    max_passage_chars: int = 6000

    def __post_init__(self) -> None:
        self.corpus_language = language_name(self.corpus_language)
        if self.per_doc < 1:
            raise ValueError(f"per_doc must be >= 1, got {self.per_doc}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if self.max_tokens < 1 or self.max_invalid < 1 or self.top_personas < 1 or self.max_passage_chars < 1:
            raise ValueError(
                "max_tokens, max_invalid, top_personas and max_passage_chars must be >= 1, got "
                f"{self.max_tokens}, {self.max_invalid}, {self.top_personas}, {self.max_passage_chars}"
            )
        if self.question_types is not None:
            bad = set(self.question_types.options) - set(QUESTION_TYPE_NAMES)
            if bad:
                raise ValueError(f"question types {sorted(bad)} are not among {list(QUESTION_TYPE_NAMES)}")
        if self.difficulties is not None:
            bad = set(self.difficulties.options) - set(DIFFICULTY_NAMES)
            if bad:
                raise ValueError(f"difficulties {sorted(bad)} are not among {list(DIFFICULTY_NAMES)}")

    def rng(self, *key_parts: object) -> random.Random:
        """The generator of one record: seeded by the run seed and the record's key (order-free)."""
        return random.Random("|".join(map(str, (self.seed, *key_parts))))
