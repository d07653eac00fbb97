"""Text Embeddings Inference's dialect: ``POST /embed`` (also ``POST /``, as TEI serves it),
``POST /rerank``, ``POST /tokenize``, ``GET /info``, so TEI client code (and
``huggingface_hub.InferenceClient(url).feature_extraction``) runs unchanged. Same engine, limits, API key and error table as every route; TEI's bodies:

- ``/embed``: ``inputs`` (a text, texts, or token ids; token ids are this model's own ids, as TEI's
  ``/tokenize`` returns them: TEI has no other tokenizer), ``truncate`` (default false, TEI's
  default: a too-long input is an error), ``prompt_name`` (a prompt of the checkpoint's
  sentence-transformers table: ``query`` gives ``Embedder.encode_queries``' vectors, ``document``
  ``encode_documents``'), ``normalize``, ``dimensions`` (Matryoshka). Answers ``[[float, ...], ...]``.
- ``/rerank``: ``query``, ``texts``, ``raw_scores`` (the logit ``z_yes - z_no``, computed back
  from the score as ``log(p) - log(1 - p)``), ``return_text``. Answers ``[{index, score, text?}]``,
  best first. A body with ``documents`` instead of ``texts`` is the Jina/Cohere v1 request of
  ``POST /v1/rerank`` and is answered by that route, in its own dialect.
- ``/tokenize``: ``[[{id, text, special, start, stop}]]`` for each input, with the special tokens
  the embedder adds (``add_special_tokens``); ``start``/``stop`` are character offsets into
  ``prompt + text``. Nothing is truncated.
- Errors: TEI's body ``{"error": ..., "error_type": ...}`` with the status of the error table.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import weakref
from concurrent.futures import Future
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedforge import __version__
from embedforge.engine import EmbedOutput, EmbedTask, EngineError, ErrorKind, RerankTask
from embedforge.server.cancel import engine_result
from embedforge.server.errors import error_response, http_status, validation_error
from embedforge.server.limits import check_input_count, require_api_key
from embedforge.server.routes import rerank as v1_rerank
from embedforge.server.routes.cohere import IN_SCHEMA, dialect_route, retry_headers
from embedforge.server.schemas import RerankRequest
from embedforge.server.state import Task, get_state

_ERROR_TYPES = {  # TEI's error_type names
    ErrorKind.QUEUE_FULL: "Overloaded",
    ErrorKind.NOT_READY: "Unhealthy",
    ErrorKind.SHUTTING_DOWN: "Unhealthy",
    ErrorKind.INTERNAL: "Backend",
    ErrorKind.CANCELLED: "Backend",
}


def tei_error(err: EngineError) -> JSONResponse:
    """TEI's error body: ``{"error", "error_type"}``; the status comes from the error table."""
    body = {"error": err.message, "error_type": _ERROR_TYPES.get(err.kind, "Validation")}
    return JSONResponse(body, status_code=http_status(err), headers=retry_headers(err))


router = APIRouter(
    tags=["tei"], dependencies=[Depends(require_api_key)], route_class=dialect_route(tei_error)
)

TokenIds = Annotated[list[Annotated[int, Field(ge=0, lt=2**31)]], Field(min_length=1)]
Direction = Literal["Right", "right", "Left", "left"]


class TeiEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | TokenIds | Annotated[list[str | TokenIds], Field(min_length=1)]
    truncate: bool | None = Field(
        None, description="Cut long inputs (default: no, a long input is an error)."
    )
    truncation_direction: Direction = "Right"
    prompt_name: str | None = Field(None, max_length=1024, description="A prompt of the checkpoint's table.")
    normalize: bool = True
    dimensions: int | None = Field(None, gt=0)


class TeiRerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str
    texts: Annotated[list[str], Field(min_length=1)]
    truncate: bool | None = None
    truncation_direction: Direction = "Right"
    raw_scores: bool = False
    return_text: bool = False


class TeiTokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | Annotated[list[str], Field(min_length=1)]
    add_special_tokens: bool = True
    prompt_name: str | None = Field(None, max_length=1024)


def _invalid(message: str, param: str) -> EngineError:
    return EngineError(ErrorKind.INVALID_INPUT, message, param=param)


def _check_direction(truncate: bool | None, direction: str) -> None:
    if truncate and direction.lower() == "left":
        raise _invalid(
            "truncation_direction 'Left' is not supported; this server cuts the end", "truncation_direction"
        )


def _prompt(embedder: Any, name: str | None) -> str | None:
    if name is None:
        return None
    if name not in embedder.prompts:
        raise _invalid(
            f"prompt_name {name!r} is not one of this model's prompts {sorted(embedder.prompts)}",
            "prompt_name",
        )
    return str(embedder.prompts[name])


# --- /embed ----------------------------------------------------------------------------------------
@router.post("/embed", include_in_schema=IN_SCHEMA, summary="Embed (TEI schema)")
@router.post("/", include_in_schema=IN_SCHEMA)  # TEI's root route: InferenceClient(url).feature_extraction
async def embed(req: TeiEmbedRequest, request: Request) -> JSONResponse:
    state = get_state(request)
    engine = state.ready_engine()
    state.resolve_model(None, Task.EMBEDDING)
    embedder = engine.embedder
    assert embedder is not None
    _check_direction(req.truncate, req.truncation_direction)
    if not req.normalize and embedder.normalize:
        raise _invalid(
            "normalize=false is not supported: this model L2-normalises its embeddings", "normalize"
        )
    items: list[str | list[int]]
    if isinstance(req.inputs, str):
        items = [req.inputs]
    elif isinstance(req.inputs[0], int):
        items = [list(req.inputs)]  # type: ignore[arg-type]  # one token-id input
    else:
        items = list(req.inputs)  # type: ignore[arg-type]
    check_input_count(len(items), state.settings.max_request_inputs, "inputs")
    common: dict[str, Any] = dict(prompt=_prompt(embedder, req.prompt_name), dim=req.dimensions)
    common["truncate"] = bool(req.truncate)
    texts = [i for i, x in enumerate(items) if isinstance(x, str)]
    ids = [i for i, x in enumerate(items) if not isinstance(x, str)]
    parts: list[tuple[list[int], EmbedTask]] = []
    if texts:
        parts.append((texts, EmbedTask(texts=[items[i] for i in texts], **common)))  # type: ignore[misc]
    if ids:
        parts.append((ids, EmbedTask(ids=[items[i] for i in ids], **common)))  # type: ignore[misc]
    futures: list[Future[EmbedOutput]] = []
    try:
        for _, task in parts:  # all submitted (and so validated) before anything is awaited
            futures.append(engine.submit_embed(task))
    except EngineError:
        for f in futures:
            f.cancel()
        raise
    results = await asyncio.gather(*(engine_result(request, f) for f in futures))
    vectors = np.empty((len(items), results[0].embeddings.shape[1]), dtype=np.float32)  # (n, dim)
    for (positions, _), out in zip(parts, results, strict=True):
        vectors[positions] = out.embeddings
    if req.normalize and not embedder.normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return JSONResponse(vectors.tolist())


# --- /rerank ---------------------------------------------------------------------------------------
def raw_scores(scores: np.ndarray) -> np.ndarray:
    """The logit ``z_yes - z_no`` behind a score ``p = softmax([z_no, z_yes])[1]``: log(p / (1 - p)),
    in float64 from the float32 score (scores of exactly 0 or 1 are kept finite)."""
    p = np.clip(scores.astype(np.float64), np.finfo(np.float32).tiny, 1.0 - np.finfo(np.float32).epsneg)
    return np.log(p) - np.log1p(-p)


async def _tei_rerank(req: TeiRerankRequest, request: Request) -> JSONResponse:
    state = get_state(request)
    engine = state.ready_engine()
    state.resolve_model(None, Task.RERANK)
    _check_direction(req.truncate, req.truncation_direction)
    check_input_count(len(req.texts), state.settings.max_request_inputs, "texts")
    task = RerankTask(req.query, list(req.texts), None, bool(req.truncate))
    out = await engine_result(request, engine.submit_rerank(task))
    shown = raw_scores(out.scores) if req.raw_scores else out.scores
    results = []
    for i in out.order:  # best first, ties in input order (the engine's ranking)
        result: dict[str, Any] = {"index": i, "score": float(shown[i])}
        if req.return_text:
            result["text"] = req.texts[i]
        results.append(result)
    return JSONResponse(results)


async def _v1_rerank(body: dict[str, Any], request: Request) -> Response:
    """A Jina/Cohere v1 body sent to ``/rerank``: answered by ``POST /v1/rerank``, in its dialect."""
    try:
        req = RerankRequest.model_validate(body)
        return await v1_rerank.rerank(req, request)
    except ValidationError as exc:
        return error_response(validation_error(RequestValidationError(exc.errors(include_url=False))))
    except EngineError as err:
        return error_response(err)


@router.post("/rerank", include_in_schema=IN_SCHEMA, summary="Rerank (TEI schema, or Jina/Cohere v1's)")
async def rerank(request: Request) -> Response:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise EngineError(ErrorKind.VALIDATION, f"the body is not JSON: {exc}", param="body") from None
    if isinstance(body, dict) and "documents" in body and "texts" not in body:
        return await _v1_rerank(body, request)
    try:
        req = TeiRerankRequest.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    return await _tei_rerank(req, request)


# --- /tokenize ------------------------------------------------------------------------------------
# The engine tokenizes in its worker threads, and a fast tokenizer must not be used from two
# threads at once: this route works on its own deep copy of the tokenizer, under a lock.
_TOKENIZERS: weakref.WeakKeyDictionary[Any, tuple[Any, threading.Lock]] = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def _private_tokenizer(model: Any) -> tuple[Any, threading.Lock]:
    with _TOKENIZERS_LOCK:
        if model not in _TOKENIZERS:
            _TOKENIZERS[model] = (copy.deepcopy(model.tokenizer), threading.Lock())
        return _TOKENIZERS[model]


def tokenize_texts(embedder: Any, texts: list[str], prompt: str, special: bool) -> list[list[dict[str, Any]]]:
    """TEI's token lists: ``prompt + text`` tokenized without truncation, with the special tokens
    the embedder adds (``Embedder.finalize_ids``: ``<|endoftext|>`` after a Qwen3 text)."""
    tok, lock = _private_tokenizer(embedder)
    added = embedder.finalize_ids([[]])[0] if special else []
    sentinel = 1 if added and added[0] == 0 else 0
    lead = embedder.finalize_ids([[sentinel]])[0].index(sentinel) if special else 0  # specials before
    full = [prompt + t for t in texts]
    with lock:
        enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
        names = tok.convert_ids_to_tokens(added) if added else []
    marks: list[dict[str, Any]] = [
        {"id": int(i), "text": str(name), "special": True, "start": None, "stop": None}
        for i, name in zip(added, names, strict=True)
    ]
    out = []
    for text, ids, offsets in zip(full, enc["input_ids"], enc["offset_mapping"], strict=True):
        tokens: list[dict[str, Any]] = [
            {"id": int(i), "text": text[a:b], "special": False, "start": int(a), "stop": int(b)}
            for i, (a, b) in zip(ids, offsets, strict=True)
        ]
        out.append(marks[:lead] + tokens + marks[lead:])
    return out


@router.post("/tokenize", include_in_schema=IN_SCHEMA, summary="Tokenize (TEI schema)")
async def tokenize(req: TeiTokenizeRequest, request: Request) -> JSONResponse:
    state = get_state(request)
    engine = state.ready_engine()
    state.resolve_model(None, Task.EMBEDDING)
    embedder = engine.embedder
    assert embedder is not None
    texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
    check_input_count(len(texts), state.settings.max_request_inputs, "inputs")
    prompt = _prompt(embedder, req.prompt_name) or ""
    tokens = await asyncio.to_thread(tokenize_texts, embedder, texts, prompt, req.add_special_tokens)
    return JSONResponse(tokens)


# --- /info ------------------------------------------------------------------------------------------
_POOLING = {"lasttoken": "last_token"}  # TEI's spelling


@router.get("/info", include_in_schema=IN_SCHEMA, summary="Model info (TEI schema)")
async def info(request: Request) -> JSONResponse:
    state = get_state(request)
    engine = state.ready_engine()
    settings = state.settings
    if engine.embedder is not None:
        model_id = state.resolve_model(None, Task.EMBEDDING)
        model: Any = engine.embedder
        model_type: dict[str, Any] = {"embedding": {"pooling": _POOLING.get(model.pooling, model.pooling)}}
        prompts: dict[str, str] | None = dict(model.prompts)
    else:
        model_id = state.resolve_model(None, Task.RERANK)
        model = engine.reranker
        model_type = {"reranker": {"id2label": {"0": "yes"}, "label2id": {"yes": 0}}}
        prompts = None
    body = {
        "model_id": model_id,
        "model_sha": None,
        "model_dtype": str(model.dtype).removeprefix("torch."),
        "model_type": model_type,
        "prompts": prompts,
        "default_prompt_name": None,
        "default_prompt": None,
        "max_concurrent_requests": settings.max_queue,
        "max_input_length": model.max_length,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_batch_requests": None,
        "max_client_batch_size": settings.max_request_inputs,
        "auto_truncate": False,
        "tokenization_workers": 1,
        "version": __version__,
        "sha": None,
        "docker_label": None,
    }
    return JSONResponse(body)


__all__ = ["TeiEmbedRequest", "TeiRerankRequest", "TeiTokenizeRequest", "raw_scores", "router", "tei_error"]
