"""What the LLM must answer (validated with pydantic) and the records the pipeline writes.

LLM answers are parsed leniently where it costs nothing (a ```json fence, a Qwen3 ``<think>`` block,
text around the object, the case of a key) and strictly where it matters (closed choices, non-empty
strings, a label that is one of the labels).

:func:`json_schema` turns an answer model into the JSON schema sent for constrained decoding: the keys
the prompts ask for (the aliases), every key required, no others, ``$ref`` inlined (some grammar
converters resolve none) and, where a step knows them, the allowed values of a field as an ``enum``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class QuestionType(str, Enum):
    keywords = "keywords"
    acquire_knowledge = "acquire_knowledge"
    summary = "summary"
    yes_or_no = "yes_or_no"
    background = "background"


class Difficulty(str, Enum):
    high_school = "high_school"
    university = "university"
    phd = "phd"


class InvalidOutput(ValueError):
    """The LLM's answer is not the JSON object the prompt asked for."""


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in an LLM answer (think blocks and code fences removed). The error says
    why, not what the answer was: :func:`~embedforge.synthesis.tasks.ask` shows the raw reply."""
    body = _THINK.sub("", text).strip()
    fenced = _FENCE.search(body)
    if fenced:
        body = fenced.group(1).strip()
    start = body.find("{")
    if start < 0:
        raise InvalidOutput("no JSON object in the answer")
    try:
        obj, _ = json.JSONDecoder().raw_decode(body[start:])
    except json.JSONDecodeError as e:
        raise InvalidOutput(f"invalid JSON ({e.msg} at char {e.pos} of the object)") from e
    return obj  # decoding from a "{" always gives a dict


class LLMOutput(BaseModel):
    """Base of every answer schema: keys matched to the field aliases without regard to case."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _casefold_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        aliases = {(f.alias or name).casefold(): (f.alias or name) for name, f in cls.model_fields.items()}
        return {aliases.get(str(k).casefold(), k): v for k, v in data.items()}


T = TypeVar("T", bound=LLMOutput)


def parse_output(text: str, schema: type[T]) -> T:
    """Parse and validate one LLM answer; raises :class:`InvalidOutput` with the reason."""
    obj = extract_json(text)
    try:
        return schema.model_validate(obj)
    except ValidationError as e:
        errors = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise InvalidOutput(f"{schema.__name__}: {errors}") from e


def _inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            return _inline_refs({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def json_schema(
    model: type[LLMOutput], *, choices: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """The JSON schema of ``model``'s answer as the prompt asks for it (keys by alias, all required,
    no others, no ``$ref``). ``choices`` narrows a string field (by alias) to the values given."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _inline_refs(raw, raw.get("$defs", {}))
    schema["required"] = list(schema["properties"])
    schema["additionalProperties"] = False
    for key, values in (choices or {}).items():
        if key not in schema["properties"]:
            raise ValueError(f"{model.__name__} has no field {key!r}; fields: {list(schema['properties'])}")
        if not values:
            raise ValueError(f"choices for {key!r} are empty")
        schema["properties"][key] = {"type": "string", "enum": list(dict.fromkeys(values))}
    return schema


class ConfigurationOutput(LLMOutput):
    """Stage 1: which candidate persona, which type of question, how hard."""

    character: str = Field(alias="Character", min_length=1)
    question_type: QuestionType = Field(alias="Question_Type")
    difficulty: Difficulty = Field(alias="Difficulty")


class QueryOutput(LLMOutput):
    """Stage 2: the query."""

    query: str = Field(alias="Query", min_length=1)


class BitextOutput(LLMOutput):
    source: str = Field(alias="Source", min_length=1)
    target: str = Field(alias="Target", min_length=1)

    @model_validator(mode="after")
    def _differ(self) -> BitextOutput:
        if self.source == self.target:
            raise ValueError("Source and Target are the same text; a translation was asked for")
        return self


class STSOutput(LLMOutput):
    s1: str = Field(alias="S1", min_length=1)
    s2: str = Field(alias="S2", min_length=1)
    s3: str = Field(alias="S3", min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> STSOutput:
        if len({self.s1, self.s2, self.s3}) < 3:
            raise ValueError("S1, S2 and S3 must be three different sentences")
        return self


class ClassificationOutput(LLMOutput):
    task: str = Field(alias="Task", min_length=1)
    labels: list[str] = Field(alias="Labels", min_length=2, max_length=8)
    text: str = Field(alias="Text", min_length=1)
    label: str = Field(alias="Label", min_length=1)

    @field_validator("labels")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        v = [s.strip() for s in v]
        if any(not s for s in v) or len(set(v)) != len(v):
            raise ValueError(f"labels must be distinct non-empty strings, got {v}")
        return v

    @model_validator(mode="after")
    def _label_in_labels(self) -> ClassificationOutput:
        if self.label not in self.labels:
            raise ValueError(f"Label {self.label!r} is not one of Labels {self.labels}")
        return self


class Provenance(BaseModel):
    """Where a record comes from. ``doc_id``, ``task``, ``sample`` and ``prompt_version`` are its key."""

    model_config = ConfigDict(extra="allow")

    doc_id: str
    task: str
    sample: int = Field(ge=0)
    prompt_version: str
    model: str
    seed: int
    language: str | None = None
    length: int | None = None
    persona: str | None = None
    candidates: list[str] | None = None
    question_type: str | None = None
    difficulty: str | None = None


class SynthRecord(BaseModel):
    """One trainer-ready record (the shared format) with its provenance."""

    instruction: str | None
    query: str = Field(min_length=1)
    positive: str = Field(min_length=1)
    negatives: list[str] = Field(default_factory=list)
    provenance: Provenance
