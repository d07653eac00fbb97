"""Request and response bodies: the OpenAI embeddings schema and the Cohere/Jina rerank schema,
plus the few extensions Qwen3 needs (``input_type``, ``instruction``, ``truncate``)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

TokenId = Annotated[int, Field(ge=0, lt=2**31)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]


class InputType(str, Enum):
    """Which side of a retrieval pair the inputs are: queries get the model's query prompt."""

    QUERY = "query"
    DOCUMENT = "document"


class EncodingFormat(str, Enum):
    FLOAT = "float"
    BASE64 = "base64"  # little-endian float32 bytes, as OpenAI sends them


# --- embeddings --------------------------------------------------------------------------------
class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings`` — the OpenAI request, with Qwen3 extensions."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "Qwen/Qwen3-Embedding-0.6B",
                    "input": ["What is the capital of China?"],
                    "input_type": "query",
                },
                {
                    "model": "Qwen/Qwen3-Embedding-0.6B",
                    "input": "The capital of China is Beijing.",
                    "dimensions": 256,
                },
            ]
        },
    )

    input: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    ) = Field(
        description="A text, a list of texts, a list of token ids, or a list of token-id lists "
        "(already tokenized text: truncated and ended like text)."
    )
    model: str | None = Field(None, description="Served model id (default: the embedder).", max_length=1024)
    dimensions: int | None = Field(
        None, gt=0, description="Matryoshka: keep the first N dimensions and re-normalise (N <= hidden size)."
    )
    encoding_format: EncodingFormat = Field(EncodingFormat.FLOAT, description="float list or base64 float32.")
    user: str | None = Field(None, max_length=1024, description="Accepted for OpenAI compatibility; unused.")
    input_type: InputType | None = Field(
        None, description="Extension: `query` adds the model's query prompt; `document` (default) adds none."
    )
    instruction: str | None = Field(
        None,
        max_length=4096,
        description="Extension: task instruction; given, every input is prefixed with `Instruct: ...\\nQuery:` "
        "(use it on both sides for symmetric tasks such as STS).",
    )
    truncate: bool = Field(
        True,
        description="Extension: cut inputs to the model's length (default); false turns a too-long input into a 400.",
    )
    input_token_ids: bool = Field(
        False,
        description="Extension: true says that token-id inputs are this model's own token ids (its tokenizer, "
        "no special tokens, as /v1/tokenize shows them). Token-id inputs without it are refused (400): OpenAI "
        "clients that tokenize for you (LangChain's OpenAIEmbeddings by default) send OpenAI tiktoken ids, "
        "which this model would read as other tokens.",
    )


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


# --- rerank ------------------------------------------------------------------------------------
class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class RerankRequest(BaseModel):
    """``POST /v1/rerank`` — the Cohere/Jina request, with ``instruction`` and ``truncate``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "Qwen/Qwen3-Reranker-0.6B",
                    "query": "What is the capital of China?",
                    "documents": ["The capital of China is Beijing.", {"text": "Gravity is a force."}],
                    "top_n": 1,
                    "return_documents": True,
                }
            ]
        },
    )

    query: str = Field(description="The query.")
    documents: Annotated[list[str | RerankDocument], Field(min_length=1)] = Field(
        description='Documents to score, as strings or `{"text": ...}` objects.'
    )
    model: str | None = Field(None, description="Served model id (default: the reranker).", max_length=1024)
    top_n: int | None = Field(None, gt=0, description="Return only the N best (default: all).")
    return_documents: bool = Field(False, description="Echo each document's text in its result.")
    instruction: str | None = Field(
        None, max_length=4096, description="Extension: task instruction (default: web search)."
    )
    truncate: bool = Field(
        True,
        description="Extension: cut pairs to the model's length (default); false turns a too-long pair into a 400.",
    )
    max_chunks_per_doc: int | None = Field(
        None, gt=0, description="Accepted for Cohere compatibility; unused."
    )


class RerankResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankResultDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    query_truncated: bool = Field(
        False,
        description="Extension: the query was longer than half of the pair window and was cut so that "
        "every document keeps at least half of it.",
    )


# --- models, health ----------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "embedforge"
    task: Literal["embedding", "rerank"]
    max_length: int
    dimensions: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    models: list[str]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


__all__ = [
    "Embedding",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EncodingFormat",
    "ErrorBody",
    "Health",
    "InputType",
    "ModelCard",
    "ModelList",
    "RerankDocument",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "RerankResultDocument",
    "RerankUsage",
    "Usage",
]
