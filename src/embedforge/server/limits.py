"""Request guards shared by the routers: body size (413), input counts (413), API key (401)."""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedforge.server.errors import ErrorKind, ServeError, error_response


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 before anything parses them.

    The body is read here (declared ``Content-Length`` first, then the bytes actually received,
    which also covers chunked uploads) and handed on unchanged.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: int | str) -> ServeError:
        return ServeError(
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
        raise ServeError(
            ErrorKind.TOO_LARGE,
            f"{param} holds {n} items, over this server's limit of {limit} per request; split the request",
            param=param,
        )


def require_api_key(request: Request) -> None:
    """FastAPI dependency of every inference route: ``Authorization: Bearer <key>`` when a key is set."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ServeError(
            ErrorKind.UNAUTHORIZED, "missing API key: send the header 'Authorization: Bearer <key>'"
        )
    if not hmac.compare_digest(token.strip().encode(), expected.get_secret_value().encode()):
        raise ServeError(ErrorKind.UNAUTHORIZED, "invalid API key")


__all__ = ["BodyLimitMiddleware", "check_input_count", "require_api_key"]
