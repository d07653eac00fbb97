"""The server's one error type and the one table that maps it to HTTP.

Everything that can go wrong with a request raises :class:`ServeError` with an :class:`ErrorKind`;
the kind alone decides the HTTP status and the OpenAI-style ``type`` of the body
``{"error": {"message", "type", "param", "code"}}``. The engine raises the same type, so code that
embeds the engine without a web server sees the same errors. Anything else that escapes a route
becomes a 500 whose body says only "internal server error" (the details go to the log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("embedforge.server")


@dataclass(frozen=True)
class _Row:
    status: int
    type: str


class ErrorKind(str, Enum):
    """What went wrong; the value is the body's ``code``."""

    INVALID_INPUT = "invalid_input"  # well-formed but unusable (too long with truncation off, bad token id)
    UNAUTHORIZED = "invalid_api_key"
    MODEL_NOT_FOUND = "model_not_found"
    ROUTE_NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TOO_LARGE = "request_too_large"  # body bytes or input count over the server's limits
    VALIDATION = "validation_error"  # the body does not match the schema
    QUEUE_FULL = "queue_full"
    NOT_READY = "model_not_ready"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal_error"


# The error table: the only place a kind becomes an HTTP status.
ERROR_TABLE: dict[ErrorKind, _Row] = {
    ErrorKind.INVALID_INPUT: _Row(400, "invalid_request_error"),
    ErrorKind.UNAUTHORIZED: _Row(401, "authentication_error"),
    ErrorKind.MODEL_NOT_FOUND: _Row(404, "not_found_error"),
    ErrorKind.ROUTE_NOT_FOUND: _Row(404, "not_found_error"),
    ErrorKind.METHOD_NOT_ALLOWED: _Row(405, "invalid_request_error"),
    ErrorKind.TOO_LARGE: _Row(413, "invalid_request_error"),
    ErrorKind.VALIDATION: _Row(422, "invalid_request_error"),
    ErrorKind.QUEUE_FULL: _Row(429, "rate_limit_error"),
    ErrorKind.NOT_READY: _Row(503, "service_unavailable_error"),
    ErrorKind.SHUTTING_DOWN: _Row(503, "service_unavailable_error"),
    ErrorKind.INTERNAL: _Row(500, "server_error"),
}


class ServeError(Exception):
    """The one error of the server and the engine.

    ``param`` names the offending request field (``"input"``, ``"dimensions"`` ...);
    ``retry_after`` (seconds) is sent as the ``Retry-After`` header.
    """

    def __init__(
        self, kind: ErrorKind, message: str, *, param: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return ERROR_TABLE[self.kind].status

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TABLE[self.kind].type,
                "param": self.param,
                "code": self.kind.value,
            }
        }


def error_response(err: ServeError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    if err.kind is ErrorKind.UNAUTHORIZED:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) if parts else "body"


def validation_error(exc: RequestValidationError) -> ServeError:
    """A schema error -> 422 naming the field, the bad value's kind and what is allowed."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    param = _location(tuple(first.get("loc", ())))
    messages = [f"{_location(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return ServeError(ErrorKind.VALIDATION, "; ".join(messages) + more, param=param)


def _http_error(exc: StarletteHTTPException) -> ServeError:
    if exc.status_code == 404:
        return ServeError(ErrorKind.ROUTE_NOT_FOUND, "no such route")
    if exc.status_code == 405:
        return ServeError(ErrorKind.METHOD_NOT_ALLOWED, "method not allowed on this route")
    if exc.status_code == 400:  # e.g. a body that is not JSON at all
        return ServeError(ErrorKind.VALIDATION, str(exc.detail))
    logger.error("unexpected HTTP exception %s: %s", exc.status_code, exc.detail)
    return ServeError(ErrorKind.INTERNAL, "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception through the error table."""

    async def on_serve_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServeError)
        return error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(_http_error(exc))

    async def on_other(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(ServeError(ErrorKind.INTERNAL, "internal server error"))

    app.add_exception_handler(ServeError, on_serve_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_other)


__all__ = [
    "ERROR_TABLE",
    "ErrorKind",
    "ServeError",
    "error_response",
    "install_error_handlers",
    "validation_error",
]
