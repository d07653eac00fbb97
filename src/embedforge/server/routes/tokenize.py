"""``POST /v1/tokenize`` — the exact token sequence each input becomes, as the model receives it.

For embedding inputs: the side's prompt (query prompt with its instruction, or the document
prompt), the text, truncation to the model's length and the appended end token, i.e.
``Embedder.tokenize`` — the very call the engine makes. For reranker pairs: the reranker's
template around ``<Instruct>/<Query>/<Document>``, only the middle part truncated, i.e.
``Reranker.tokenize_pairs``. Each sequence comes with its token strings, its length, its length
before truncation and the position where truncation cut.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedforge.engine import Side
from embedforge.engine.tasks import check_texts_unicode, check_unicode
from embedforge.server.limits import check_input_count
from embedforge.server.responses import ERROR_RESPONSES
from embedforge.server.schemas import InputType
from embedforge.server.state import Task, get_state

router = APIRouter(tags=["tokenize"])  # /v1/*: the API key is checked by ApiKeyMiddleware


# --- schemas -------------------------------------------------------------------------------------
class TokenizeRequest(BaseModel):
    """Either ``input`` (embedding side) or ``query`` + ``documents`` (reranker pairs)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"input": ["What is the capital of China?"], "input_type": "query"},
                {"query": "What is the capital of China?", "documents": ["Beijing is the capital."]},
            ]
        },
    )

    input: str | Annotated[list[str], Field(min_length=1)] | None = Field(
        None, description="Embedding inputs, tokenized as /v1/embeddings tokenizes them."
    )
    input_type: InputType | None = Field(
        None, description="`query` adds the query prompt, `document` the document prompt (as /v1/embeddings)."
    )
    instruction: str | None = Field(
        None,
        max_length=4096,
        description="Task instruction (embedding: `Instruct: ...\\nQuery:`; reranker: `<Instruct>: ...`).",
    )
    query: str | None = Field(None, description="Reranker query (with `documents`).")
    documents: Annotated[list[str], Field(min_length=1)] | None = Field(
        None, description="Reranker documents (with `query`), tokenized as /v1/rerank tokenizes them."
    )
    model: str | None = Field(None, max_length=1024, description="Served model id (default: by the side).")

    @model_validator(mode="after")
    def _one_side(self) -> TokenizeRequest:
        pairs = self.query is not None or self.documents is not None
        if (self.input is None) == (not pairs):
            raise ValueError(
                "give either `input` (embedding) or `query` and `documents` (reranker), not both"
            )
        if pairs and (self.query is None or self.documents is None):
            raise ValueError("reranker pairs need both `query` and `documents`")
        if pairs and self.input_type is not None:
            raise ValueError("`input_type` applies to `input` only, not to reranker pairs")
        return self


class SegmentKind(str, Enum):
    PROMPT = "prompt"  # the embedding prompt (instruction), when its tokens are a prefix of the sequence
    TEXT = "text"  # the user's text (for the reranker: the formatted instruction/query/document part)
    SPECIAL = "special"  # tokens the model adds: <|endoftext|>, [CLS]/[SEP]
    TEMPLATE = "template"  # the reranker's chat template before and after the pair


class Segment(BaseModel):
    kind: SegmentKind
    start: int
    stop: int


class TokenizedInput(BaseModel):
    index: int
    ids: list[int] = Field(description="Token ids exactly as the model receives them.")
    tokens: list[str] = Field(description="The vocabulary string of each id (e.g. `<|endoftext|>`).")
    pieces: list[str] = Field(description="Each id decoded on its own (readable text).")
    count: int = Field(description="len(ids).")
    untruncated_count: int = Field(description="Length the sequence would have without truncation.")
    truncated: bool
    cut_at: int | None = Field(None, description="Position in `ids` where truncation removed tokens.")
    segments: list[Segment]


class TokenizeResponse(BaseModel):
    object: str = "list"
    model: str
    side: str = Field(description="`query`, `document`, `text` (no prompt) or `rerank`.")
    prompt: str = Field(description="The embedding prompt put before each text ('' for none or reranker).")
    max_length: int
    data: list[TokenizedInput]
    usage: dict[str, int]


# --- tokenizing -----------------------------------------------------------------------------------
# Embedder and Reranker serialise every tokenizer call (their ``tokenizer_lock``), so this route
# tokenizes in a thread of its own beside the engine's workers, through the same calls they make.
def _strings(model: Any, ids: list[int]) -> tuple[list[str], list[str]]:
    with model.tokenizer_lock:
        tokens = [str(t) for t in model.tokenizer.convert_ids_to_tokens(ids)]
        pieces = [model.tokenizer.decode([i]) for i in ids]
    return tokens, pieces


def _cut(final: list[int], full: list[int]) -> int:
    """Where ``final`` (truncated) first departs from ``full`` (the untruncated sequence)."""
    n = 0
    while n < len(final) and n < len(full) and final[n] == full[n]:
        n += 1
    return n


def _annotate(model: Any, i: int, ids: list[int], full: list[int], segments: list[Segment]) -> TokenizedInput:
    tokens, pieces = _strings(model, ids)
    truncated = len(full) > len(ids)
    return TokenizedInput(
        index=i,
        ids=ids,
        tokens=tokens,
        pieces=pieces,
        count=len(ids),
        untruncated_count=len(full),
        truncated=truncated,
        cut_at=_cut(ids, full) if truncated else None,
        segments=[s for s in segments if s.stop > s.start],
    )


def tokenize_embedding(embedder: Any, texts: list[str], prompt: str) -> list[TokenizedInput]:
    """What ``Embedder.tokenize`` (the engine's call) gives for ``prompt + text``, annotated."""
    final = embedder.tokenize(texts, prompt=prompt)
    raw = embedder.raw_ids([prompt + t for t in texts])  # no special tokens, no truncation
    lead_tail = embedder.finalize_ids([[]])[0]  # the special tokens the model adds around a text
    sentinel = 1 if lead_tail[:1] == [0] else 0
    lead = embedder.finalize_ids([[sentinel]])[0].index(sentinel)  # how many go before the text
    prompt_ids = embedder.raw_ids([prompt])[0] if prompt else []
    out = []
    for i, (ids, body) in enumerate(zip(final, raw, strict=True)):
        full = lead_tail[:lead] + body + lead_tail[lead:]
        stop = len(ids) - (len(lead_tail) - lead)  # where the text ends and the added tokens start
        n_prompt = len(prompt_ids) if ids[lead : lead + len(prompt_ids)] == prompt_ids else 0
        n_prompt = min(n_prompt, stop - lead)
        segments = [
            Segment(kind=SegmentKind.SPECIAL, start=0, stop=lead),
            Segment(kind=SegmentKind.PROMPT, start=lead, stop=lead + n_prompt),
            Segment(kind=SegmentKind.TEXT, start=lead + n_prompt, stop=stop),
            Segment(kind=SegmentKind.SPECIAL, start=stop, stop=len(ids)),
        ]
        out.append(_annotate(embedder, i, ids, full, segments))
    return out


def tokenize_pairs(
    reranker: Any, query: str, documents: list[str], instruction: str | None
) -> list[TokenizedInput]:
    """What ``Reranker.tokenize_pairs`` (the engine's call) gives for each pair, annotated."""
    from embedforge.prompts import DEFAULT_RERANK_INSTRUCTION, format_rerank_pair

    pairs = [(query, d) for d in documents]
    final = reranker.tokenize_pairs_with_info(pairs, instruction).ids
    instr = DEFAULT_RERANK_INSTRUCTION if instruction is None else instruction
    raw = reranker.raw_ids([format_rerank_pair(query, d, instr) for d in documents])
    pre, suf = list(reranker.prefix_ids), list(reranker.suffix_ids)
    out = []
    for i, (ids, middle) in enumerate(zip(final, raw, strict=True)):
        stop = len(ids) - len(suf)
        segments = [
            Segment(kind=SegmentKind.TEMPLATE, start=0, stop=len(pre)),
            Segment(kind=SegmentKind.TEXT, start=len(pre), stop=stop),
            Segment(kind=SegmentKind.TEMPLATE, start=stop, stop=len(ids)),
        ]
        out.append(_annotate(reranker, i, ids, pre + middle + suf, segments))
    return out


@router.post(
    "/v1/tokenize",
    response_model=TokenizeResponse,
    responses=ERROR_RESPONSES,
    summary="The exact token sequences the model receives",
)
async def tokenize(req: TokenizeRequest, request: Request) -> TokenizeResponse:
    state = get_state(request)
    engine = state.ready_engine()
    if req.input is not None:
        model_id = state.resolve_model(req.model, Task.EMBEDDING)
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        check_input_count(len(texts), state.settings.max_request_inputs, "input")
        check_texts_unicode(texts, "input")
        side: Side | None = "query" if req.input_type is InputType.QUERY else None
        if req.input_type is InputType.DOCUMENT:
            side = "document"
        prompt = engine.side_prompt(side, req.instruction)  # the engine's one rule, as /v1/embeddings
        embedder = engine.embedder
        assert embedder is not None
        data = await asyncio.to_thread(tokenize_embedding, embedder, texts, prompt)
        max_length = embedder.max_length
        side_name: str = side or "text"
    else:
        assert req.query is not None and req.documents is not None
        model_id = state.resolve_model(req.model, Task.RERANK)
        check_input_count(len(req.documents), state.settings.max_request_inputs, "documents")
        check_unicode(req.query, "query")
        check_texts_unicode(req.documents, "documents")
        reranker = engine.reranker
        assert reranker is not None
        data = await asyncio.to_thread(
            tokenize_pairs, reranker, req.query, list(req.documents), req.instruction
        )
        max_length = reranker.max_length
        side_name, prompt = "rerank", ""
    return TokenizeResponse(
        model=model_id,
        side=side_name,
        prompt=prompt,
        max_length=max_length,
        data=data,
        usage={"total_tokens": sum(d.count for d in data)},
    )


__all__ = ["TokenizeRequest", "TokenizeResponse", "router", "tokenize_embedding", "tokenize_pairs"]
