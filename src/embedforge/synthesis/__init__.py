"""Persona-driven synthetic training data: the paper's two-stage retrieval recipe, bitext, STS and
classification, as a resumable pipeline over any OpenAI-compatible endpoint or a local checkpoint."""

from embedforge.synthesis.config import Choice, LengthRange, SynthesisConfig
from embedforge.synthesis.llm import (
    LLMError,
    LLMFatalError,
    LocalBackend,
    OpenAIBackend,
    OutputSchema,
    ResponseFormat,
    RetryPolicy,
    make_backend,
)
from embedforge.synthesis.pipeline import PersonaIndex, SynthesisReport, synthesize
from embedforge.synthesis.prompts import PROMPT_VERSION
from embedforge.synthesis.selection import FilterReport, add_negatives, filter_records
from embedforge.synthesis.sources import Document, load_corpus, load_personas
from embedforge.synthesis.store import RecordKey, SynthesisStore

__all__ = [
    "PROMPT_VERSION",
    "Choice",
    "Document",
    "FilterReport",
    "LLMError",
    "LLMFatalError",
    "LengthRange",
    "LocalBackend",
    "OpenAIBackend",
    "OutputSchema",
    "PersonaIndex",
    "RecordKey",
    "ResponseFormat",
    "RetryPolicy",
    "SynthesisConfig",
    "SynthesisReport",
    "SynthesisStore",
    "add_negatives",
    "filter_records",
    "load_corpus",
    "load_personas",
    "make_backend",
    "synthesize",
]
