"""The engine's one error type, with transport-free kinds.

Everything that can go wrong with a request raises :class:`EngineError` carrying an
:class:`ErrorKind`. The kind says *what* went wrong, never how a transport reports it: the HTTP
server maps kinds to status codes in its one table (``embedforge.server.errors.ERROR_TABLE``); a
Ray actor or a user's asyncio app can match on the kind directly. The kind's value is the stable
error code sent to clients.
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(str, Enum):
    """What went wrong; the value is the stable error code."""

    # the request
    INVALID_INPUT = "invalid_input"  # well-formed but unusable: too long with truncation off, bad token id
    VALIDATION = "validation_error"  # malformed: wrong shape or type, text that is not valid Unicode
    TOO_LARGE = "request_too_large"  # more inputs or bytes than the configured limits
    MODEL_NOT_FOUND = "model_not_found"  # no model for this task, or an unknown model id
    # the engine's state
    QUEUE_FULL = "queue_full"  # backpressure: retry after ``retry_after`` seconds
    NOT_READY = "model_not_ready"
    SHUTTING_DOWN = "shutting_down"
    CANCELLED = "cancelled"  # the caller abandoned the request (e.g. its client disconnected)
    INTERNAL = "internal_error"  # a bug; the message never carries internals
    # raised only by a front end (the engine itself never does)
    UNAUTHORIZED = "invalid_api_key"
    ROUTE_NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"


class EngineError(Exception):
    """The one error of the engine (and of the server built on it).

    ``param`` names the offending request field (``"input"``, ``"documents"``, ``"dimensions"``);
    ``retry_after`` (seconds) tells the caller when trying again makes sense.
    """

    def __init__(
        self, kind: ErrorKind, message: str, *, param: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"EngineError({self.kind.name}, {self.message!r}, param={self.param!r})"


__all__ = ["EngineError", "ErrorKind"]
