"""Await engine work on behalf of an HTTP client, and abandon it when the client leaves.

A route hands the engine's future to :func:`engine_result`, which waits for whichever comes
first: the result, or the client's ``http.disconnect``. When the client is gone (or the route's
task is cancelled, as at the end of the graceful-shutdown timeout) the future is cancelled: the
engine skips the request if it is still queued and stops its batch at the next sub-batch if
every request in it was abandoned.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Any, TypeVar

from fastapi import Request

from embedforge.engine import EngineError, ErrorKind

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    """Return once the client has disconnected (the body has already been read by then)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def engine_result(request: Request, future: Future[T]) -> T:
    """The future's result; cancels it and raises ``CANCELLED`` when the client disconnects first."""
    result: asyncio.Future[Any] = asyncio.wrap_future(future)
    gone: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server gave up on this request: so does the engine
        future.cancel()
        raise
    finally:
        gone.cancel()
    if result.done():
        return result.result()
    future.cancel()
    result.cancel()
    raise EngineError(ErrorKind.CANCELLED, "the client disconnected; its request was cancelled")


__all__ = ["engine_result"]
