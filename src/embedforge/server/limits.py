"""Request guards: API key (401) and body size (413) before anything reads the body, input counts (413).

Order (outermost first): :class:`ApiKeyMiddleware` answers an unauthenticated request from its
headers alone, so neither a bad body nor a huge one costs anything without a key;
:class:`BodyLimitMiddleware` then reads the body and refuses one over the limit before it is parsed.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping

from fastapi import Request
from fastapi.responses import Response
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedforge.server.errors import EngineError, ErrorKind, error_response


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 before anything parses them.

    The body is read here (declared ``Content-Length`` first, then the bytes actually received,
    which also covers chunked uploads) and handed on unchanged.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: int | str) -> EngineError:
        return EngineError(
            ErrorKind.TOO_LARGE,
            f"request body of {size} bytes is over this server's limit of {self.max_bytes} bytes",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(self._too_large(int(declared)))(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await error_response(self._too_large(f"more than {self.max_bytes}"))(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def check_input_count(n: int, limit: int, param: str) -> None:
    """More than ``--max-request-inputs`` inputs in one request -> 413."""
    if n > limit:
        raise EngineError(
            ErrorKind.TOO_LARGE,
            f"{param} holds {n} items, over this server's limit of {limit} per request; split the request",
            param=param,
        )


# Everything else needs the key when one is set (unknown paths too: they answer 401, not 404).
PUBLIC_PATHS = frozenset(
    {"/", "/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
PUBLIC_PREFIXES = ("/playground/",)  # the browser playground's page files (it sends the key itself)


def is_protected(path: str) -> bool:
    """Whether ``path`` needs the API key: every route but health, metrics, the docs and the playground page."""
    return path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES)


def check_api_key(authorization: str, expected: SecretStr | None) -> None:
    """``Authorization: Bearer <key>`` when a key is set, else 401 (compared in constant time)."""
    if expected is None:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise EngineError(
            ErrorKind.UNAUTHORIZED, "missing API key: send the header 'Authorization: Bearer <key>'"
        )
    if not hmac.compare_digest(token.strip().encode(), expected.get_secret_value().encode()):
        raise EngineError(ErrorKind.UNAUTHORIZED, "invalid API key")


class ApiKeyMiddleware:
    """Check the API key of protected routes from the headers, before the body is read or parsed
    (bad JSON without a key is a 401, and an unauthenticated 14 MB body is never read).

    The 401 body is the OpenAI-style one, or ``render_by_path[path](error)`` for routes of another
    client dialect (TEI, Cohere), so each client sees its own error shape."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: SecretStr | None,
        render_by_path: Mapping[str, Callable[[EngineError], Response]] | None = None,
    ) -> None:
        self.app, self.api_key = app, api_key
        self.render_by_path = dict(render_by_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is not None and scope["type"] == "http" and is_protected(scope.get("path", "")):
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            try:
                check_api_key(header, self.api_key)
            except EngineError as err:
                render = self.render_by_path.get(scope.get("path", ""), error_response)
                await render(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def require_api_key(request: Request) -> None:
    """FastAPI dependency: the same check, for a router that may be mounted without the
    middleware (in the app, the middleware has already checked it before the body was read)."""
    check_api_key(request.headers.get("authorization", ""), request.app.state.settings.api_key)


__all__ = [
    "PUBLIC_PATHS",
    "ApiKeyMiddleware",
    "BodyLimitMiddleware",
    "check_api_key",
    "check_input_count",
    "is_protected",
    "require_api_key",
]
