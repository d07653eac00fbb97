"""The one table that maps the engine's error kinds to HTTP, and the handlers that use it.

Everything that can go wrong with a request raises :class:`~embedforge.engine.EngineError` with an
:class:`~embedforge.engine.ErrorKind` (the engine and the server raise the same type); the kind
alone decides the HTTP status and the OpenAI-style ``type`` of the body
``{"error": {"message", "type", "param", "code"}}``. Anything else that escapes a route becomes a
500 whose body says only "internal server error" (the details go to the log), sent on a
connection that stays usable (:class:`GuardMiddleware`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedforge.engine.errors import EngineError, ErrorKind

logger = logging.getLogger("embedforge.server")


@dataclass(frozen=True)
class _Row:
    status: int
    type: str


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
    ErrorKind.CANCELLED: _Row(499, "cancelled_error"),  # nginx's "client closed request"; nobody reads it
    ErrorKind.NOT_READY: _Row(503, "service_unavailable_error"),
    ErrorKind.SHUTTING_DOWN: _Row(503, "service_unavailable_error"),
    ErrorKind.INTERNAL: _Row(500, "server_error"),
}
UNDOCUMENTED = {499, 500}  # statuses left out of the OpenAPI error documentation


def http_status(err: EngineError) -> int:
    """The HTTP status of ``err`` (from the table)."""
    return ERROR_TABLE[err.kind].status


def error_body(err: EngineError) -> dict[str, Any]:
    return {
        "error": {
            "message": err.message,
            "type": ERROR_TABLE[err.kind].type,
            "param": err.param,
            "code": err.kind.value,
        }
    }


def error_response(err: EngineError) -> JSONResponse:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    if err.kind is ErrorKind.UNAUTHORIZED:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(err), status_code=http_status(err), headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) if parts else "body"


def _message(error: dict[str, Any]) -> str:
    if error.get("type") == "string_unicode":  # a JSON "\\ud800" escape: a lone surrogate
        return "not valid Unicode: it holds a lone surrogate (surrogates must come in pairs)"
    return str(error.get("msg", "invalid"))


def validation_error(exc: RequestValidationError) -> EngineError:
    """A schema error -> 422 naming the field, the bad value's kind and what is allowed."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    param = _location(tuple(first.get("loc", ())))
    messages = [f"{_location(tuple(e.get('loc', ())))}: {_message(e)}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return EngineError(ErrorKind.VALIDATION, "; ".join(messages) + more, param=param)


def _http_error(exc: StarletteHTTPException) -> EngineError:
    if exc.status_code == 404:
        return EngineError(ErrorKind.ROUTE_NOT_FOUND, "no such route")
    if exc.status_code == 405:
        return EngineError(ErrorKind.METHOD_NOT_ALLOWED, "method not allowed on this route")
    if exc.status_code == 400:  # e.g. a body that is not JSON at all
        return EngineError(ErrorKind.VALIDATION, str(exc.detail))
    logger.error("unexpected HTTP exception %s: %s", exc.status_code, exc.detail)
    return EngineError(ErrorKind.INTERNAL, "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Route every request error through the error table (unexpected ones: :class:`GuardMiddleware`)."""

    async def on_engine_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EngineError)
        return error_response(exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(_http_error(exc))

    app.add_exception_handler(EngineError, on_engine_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


class GuardMiddleware:
    """The last line: no request ends without a JSON body, and none drops its connection.

    - An unexpected exception becomes a JSON 500 that names nothing internal (the traceback goes
      to the log) and is *not* re-raised, so the server keeps the keep-alive connection (an
      ``Exception`` handler would run in Starlette's outer middleware, which re-raises, and
      uvicorn then closes the connection).
    - A request cancelled by the server (the graceful-shutdown timeout ran out while it was
      still being served) gets a 503 ``shutting_down`` instead of uvicorn's plain-text 500.

    When the response had already started, nothing can be sent: the error propagates.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except asyncio.CancelledError:
            if started:
                raise
            err = EngineError(
                ErrorKind.SHUTTING_DOWN,
                "the server shut down before this request finished; retry it",
                retry_after=1,
            )
            await error_response(err)(scope, receive, send)
            uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python >= 3.11
            if uncancel is not None:  # the cancellation is answered: the request ends normally
                uncancel()
        except Exception:  # noqa: BLE001 - the one place unexpected errors become a 500
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await error_response(EngineError(ErrorKind.INTERNAL, "internal server error"))(
                scope, receive, send
            )


__all__ = [
    "ERROR_TABLE",
    "UNDOCUMENTED",
    "EngineError",
    "ErrorKind",
    "GuardMiddleware",
    "error_body",
    "error_response",
    "http_status",
    "install_error_handlers",
    "validation_error",
]
