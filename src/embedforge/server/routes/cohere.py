"""Cohere's dialect: ``POST /v2/rerank``, ``POST /v1/embed`` and ``POST /v2/embed``.

The Cohere SDK (``cohere.ClientV2(base_url=...).rerank / .embed``, ``cohere.Client(...).embed``)
runs unchanged against these routes. They use the same engine, limits, API key and error table as
every route; only the bodies are Cohere's:

- ``input_type``: ``search_query`` -> the query side (the model's query prompt, as
  ``Embedder.encode_queries``), ``search_document`` -> the document side (``encode_documents``),
  ``classification`` / ``clustering`` / absent -> plain text (no prompt). The extension field
  ``instruction`` puts ``Instruct: ...\\nQuery:`` before every text (the library's one rule,
  :func:`embedforge.prompts.side_prompt`); ``image`` is refused.
- ``embedding_types``: ``float``, ``base64`` (little-endian float32), ``int8`` / ``uint8``
  (scalar quantisation over the fixed range [-1, 1], which holds every component of a unit
  vector: no corpus calibration, so a text's codes never depend on the rest of the request),
  ``binary`` / ``ubinary`` (sign bits packed, ``dim / 8`` bytes; ``binary`` is ``ubinary - 128``).
  The codes come from :mod:`embedforge.index.quantize` (the index's own quantisation).
- ``output_dimension``: Matryoshka, as ``dimensions`` on ``/v1/embeddings``.
- ``truncate``: ``END`` (default) cuts a long text's end, ``NONE`` refuses it; ``START`` is refused.
- Errors: Cohere's body ``{"id": ..., "message": ...}`` with the status of the error table.

Cohere's v1 rerank is ``POST /v1/rerank`` (:mod:`embedforge.server.routes.rerank`).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from embedforge.engine import EmbedTask, EngineError, ErrorKind, RerankTask, Side
from embedforge.server.cancel import engine_result
from embedforge.server.errors import http_status, validation_error
from embedforge.server.limits import check_input_count, require_api_key
from embedforge.server.state import Task, get_state

IN_SCHEMA = False  # dialect routes stay out of /openapi.json: its error bodies are OpenAI's


# --- a route class that answers errors in a client's dialect ------------------------------------
def dialect_route(render: Callable[[EngineError], Response]) -> type[APIRoute]:
    """An ``APIRoute`` whose errors (engine, schema, API key) are rendered by ``render``."""

    class DialectRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                try:
                    return await handler(request)
                except EngineError as err:
                    return render(err)
                except RequestValidationError as exc:
                    return render(validation_error(exc))

            return run

    return DialectRoute


def retry_headers(err: EngineError) -> dict[str, str] | None:
    return {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None


def cohere_error(err: EngineError) -> JSONResponse:
    """Cohere's error body: ``{"id", "message"}``; the status comes from the error table."""
    body = {"id": uuid.uuid4().hex, "message": err.message}
    return JSONResponse(body, status_code=http_status(err), headers=retry_headers(err))


router = APIRouter(
    tags=["cohere"], dependencies=[Depends(require_api_key)], route_class=dialect_route(cohere_error)
)


# --- schemas -----------------------------------------------------------------------------------
class CohereInputType(str, Enum):
    SEARCH_QUERY = "search_query"
    SEARCH_DOCUMENT = "search_document"
    CLASSIFICATION = "classification"
    CLUSTERING = "clustering"
    IMAGE = "image"


class EmbeddingType(str, Enum):
    FLOAT = "float"
    INT8 = "int8"
    UINT8 = "uint8"
    BINARY = "binary"
    UBINARY = "ubinary"
    BASE64 = "base64"


class CohereTruncate(str, Enum):
    NONE = "NONE"
    START = "START"
    END = "END"


Texts = Annotated[list[str], Field(min_length=1)]


class CohereEmbedRequest(BaseModel):
    """``POST /v1/embed`` and ``/v2/embed`` (Cohere's fields, plus ``instruction``)."""

    model_config = ConfigDict(extra="forbid")

    texts: Texts | None = Field(None, description="The texts to embed.")
    images: list[str] | None = Field(None, description="Refused: this server embeds text.")
    inputs: list[Any] | None = Field(None, description="Refused: send `texts`.")
    model: str | None = Field(None, max_length=1024, description="Served model id (default: the embedder).")
    input_type: CohereInputType | None = Field(None, description="search_query, search_document, ...")
    embedding_types: Annotated[list[EmbeddingType], Field(min_length=1)] | None = None
    truncate: CohereTruncate = CohereTruncate.END
    output_dimension: int | None = Field(None, gt=0, description="Matryoshka: keep the first N dims.")
    max_tokens: int | None = Field(None, gt=0, description="Accepted when >= the model's length.")
    priority: int | None = Field(None, description="Accepted; unused.")
    instruction: str | None = Field(None, max_length=4096, description="Extension: task instruction.")


class CohereRerankRequest(BaseModel):
    """``POST /v2/rerank`` (Cohere's fields, plus ``instruction``)."""

    model_config = ConfigDict(extra="forbid")

    query: str
    documents: Texts
    model: str | None = Field(None, max_length=1024, description="Served model id (default: the reranker).")
    top_n: int | None = Field(None, gt=0)
    max_tokens_per_doc: int | None = Field(None, gt=0, description="Accepted when >= the model's length.")
    relevant_spans: dict[str, Any] | None = Field(None, description="Refused when enabled.")
    priority: int | None = Field(None, description="Accepted; unused.")
    return_documents: bool = Field(False, description="Extension (v1's field): echo each document.")
    instruction: str | None = Field(None, max_length=4096, description="Extension: task instruction.")


# --- quantised encodings -----------------------------------------------------------------------
def encode_embeddings(vectors: np.ndarray, kinds: list[EmbeddingType]) -> dict[str, list[Any]]:
    """Cohere's ``embeddings`` object: one list per requested type, rows in input order.

    ``vectors``: (n, dim) float32.
    """
    # Imported here: the index package (pyarrow) loads only when a quantised type is asked for.
    from embedforge.index.quantize import quantize_binary, quantize_int8

    dim = vectors.shape[1]
    out: dict[str, list[Any]] = {}
    for kind in dict.fromkeys(kinds):  # each type once, in the order asked
        if kind is EmbeddingType.FLOAT:
            out[kind.value] = vectors.tolist()
        elif kind is EmbeddingType.BASE64:
            out[kind.value] = [base64.b64encode(r.astype("<f4").tobytes()).decode("ascii") for r in vectors]
        elif kind in (EmbeddingType.INT8, EmbeddingType.UINT8):
            unit = np.stack([np.full(dim, -1.0), np.full(dim, 1.0)]).astype(np.float32)  # (2, dim)
            codes = quantize_int8(vectors, unit).astype(np.int16)  # (n, dim) in [-128, 127]
            out[kind.value] = (codes + 128 if kind is EmbeddingType.UINT8 else codes).tolist()
        else:
            packed = quantize_binary(vectors)[:, : -(-dim // 8)].astype(np.int16)  # (n, ceil(dim / 8))
            out[kind.value] = (packed - 128 if kind is EmbeddingType.BINARY else packed).tolist()
    return out


# --- embed ---------------------------------------------------------------------------------------
def _invalid(message: str, param: str) -> EngineError:
    return EngineError(ErrorKind.INVALID_INPUT, message, param=param)


def _side(input_type: CohereInputType | None) -> Side | None:
    if input_type is CohereInputType.SEARCH_QUERY:
        return "query"
    if input_type is CohereInputType.SEARCH_DOCUMENT:
        return "document"
    if input_type is CohereInputType.IMAGE:
        raise _invalid("input_type 'image' is not supported: this server embeds text", "input_type")
    return None  # classification, clustering, none: plain text (or `instruction` on every text)


def _check_length_field(value: int | None, limit: int, name: str, what: str) -> None:
    if value is not None and value < limit:
        raise _invalid(
            f"{name}={value} is below this model's length of {limit} tokens, which this server does not "
            f"support: {what} are cut to the model's length (send a larger value or leave {name} out)",
            name,
        )


async def _embed(req: CohereEmbedRequest, request: Request, version: Literal["1", "2"]) -> JSONResponse:
    state = get_state(request)
    engine = state.ready_engine()
    state.resolve_model(req.model, Task.EMBEDDING)
    assert engine.embedder is not None
    if req.images or req.inputs:
        raise _invalid("images and `inputs` are not supported: send the texts as `texts`", "texts")
    if req.texts is None:
        raise EngineError(ErrorKind.VALIDATION, "texts: field required", param="texts")
    if version == "2" and req.input_type is None:
        raise EngineError(ErrorKind.VALIDATION, "input_type: field required", param="input_type")
    if req.truncate is CohereTruncate.START:
        raise _invalid("truncate='START' is not supported; use 'END' (cut the end) or 'NONE'", "truncate")
    _check_length_field(req.max_tokens, engine.embedder.max_length, "max_tokens", "texts")
    check_input_count(len(req.texts), state.settings.max_request_inputs, "texts")
    task = EmbedTask(
        texts=list(req.texts),
        side=_side(req.input_type),
        instruction=req.instruction,
        dim=req.output_dimension,
        truncate=req.truncate is CohereTruncate.END,
    )
    out = await engine_result(request, engine.submit_embed(task))
    body: dict[str, Any] = {"id": uuid.uuid4().hex, "texts": list(req.texts)}
    if req.embedding_types is None and version == "1":
        body["response_type"] = "embeddings_floats"
        body["embeddings"] = out.embeddings.tolist()
    else:
        body["response_type"] = "embeddings_by_type"
        body["embeddings"] = encode_embeddings(out.embeddings, req.embedding_types or [EmbeddingType.FLOAT])
    body["meta"] = {"api_version": {"version": version}, "billed_units": {"input_tokens": out.tokens}}
    return JSONResponse(body)


@router.post("/v1/embed", include_in_schema=IN_SCHEMA, summary="Embed (Cohere v1 schema)")
async def embed_v1(req: CohereEmbedRequest, request: Request) -> JSONResponse:
    return await _embed(req, request, "1")


@router.post("/v2/embed", include_in_schema=IN_SCHEMA, summary="Embed (Cohere v2 schema)")
async def embed_v2(req: CohereEmbedRequest, request: Request) -> JSONResponse:
    return await _embed(req, request, "2")


# --- rerank ----------------------------------------------------------------------------------------
@router.post("/v2/rerank", include_in_schema=IN_SCHEMA, summary="Rerank (Cohere v2 schema)")
async def rerank_v2(req: CohereRerankRequest, request: Request) -> JSONResponse:
    state = get_state(request)
    engine = state.ready_engine()
    state.resolve_model(req.model, Task.RERANK)
    assert engine.reranker is not None
    if req.relevant_spans and req.relevant_spans.get("mode", "disabled") != "disabled":
        raise _invalid("relevant_spans are not supported by this server", "relevant_spans")
    _check_length_field(req.max_tokens_per_doc, engine.reranker.max_length, "max_tokens_per_doc", "pairs")
    check_input_count(len(req.documents), state.settings.max_request_inputs, "documents")
    task = RerankTask(req.query, list(req.documents), req.instruction, True, req.top_n)
    out = await engine_result(request, engine.submit_rerank(task))
    results = []
    for i in out.order:  # best first, ties in input order, at most top_n (the engine's ranking)
        result: dict[str, Any] = {"index": i, "relevance_score": float(out.scores[i])}
        if req.return_documents:
            result["document"] = {"text": req.documents[i]}
        results.append(result)
    meta = {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": out.tokens},
    }
    return JSONResponse({"id": uuid.uuid4().hex, "results": results, "meta": meta})


__all__ = [
    "CohereEmbedRequest",
    "CohereRerankRequest",
    "EmbeddingType",
    "cohere_error",
    "dialect_route",
    "encode_embeddings",
    "router",
]
