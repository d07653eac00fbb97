"""``GET /`` — the web playground: a static page (shipped in the package, no network) that drives
the public HTTP API, plus ``GET /playground/config.json`` (what the page needs to know before the
user types a key) and the ``Server-Timing`` header that carries each request's server-side latency.

Public and read-only: the page holds no data; every number it shows comes from the API routes,
which keep their own authentication.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedforge import prompts
from embedforge.engine import EngineError, ErrorKind
from embedforge.inputs import MIN_DIM
from embedforge.server.state import get_state

router = APIRouter(tags=["playground"], include_in_schema=False)

_MEDIA = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8", ".js": "text/javascript"}
# The page's files, by name: nothing else under static/ (or outside it) is ever served.
STATIC_FILES = ("index.html", "playground.css", "playground.js")
# The page may talk only to this server and load nothing from anywhere else.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _read(name: str) -> bytes:
    return resources.files("embedforge.server").joinpath("static").joinpath(name).read_bytes()


def _static(name: str) -> Response:
    suffix = name[name.rfind(".") :]
    headers = {
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }
    return Response(_read(name), media_type=_MEDIA[suffix], headers=headers)


@router.get("/", response_class=HTMLResponse)
async def page() -> Response:
    return _static("index.html")


def instruction_choices() -> list[dict[str, Any]]:
    """The official Qwen3 per-task instructions, one entry per distinct text, with the side rule of
    the official evaluation (``both``: documents are instructed too, e.g. STS and bitext)."""
    rows: dict[str, dict[str, Any]] = {}

    def add(task: str, text: str, both: bool) -> None:
        row = rows.setdefault(text, {"instruction": text, "tasks": [], "both_sides": both})
        row["tasks"].append(task)

    for task, text in prompts.QWEN3_RETRIEVAL_INSTRUCTIONS.items():
        add(task, text, task in prompts.QWEN3_SYMMETRIC_RETRIEVAL_TASKS)
    for task in sorted(prompts.QWEN3_STS_TASKS | prompts.QWEN3_PAIR_CLASSIFICATION_TASKS):
        add(task, prompts.QWEN3_STS_INSTRUCTION, True)
    for task in sorted(prompts.QWEN3_BITEXT_TASKS):
        add(task, prompts.QWEN3_BITEXT_INSTRUCTION, True)
    for task, text in prompts.QWEN3_ALL_TEXT_INSTRUCTIONS.items():
        add(task, text, True)
    return list(rows.values())


@router.get("/playground/config.json")
async def config(request: Request) -> JSONResponse:
    """Whether a key is needed, whether search is on, the instructions the picker offers."""
    state = get_state(request)
    return JSONResponse(
        {
            "auth_required": state.settings.api_key is not None,
            "search": getattr(state, "index", None) is not None,
            "min_dimensions": MIN_DIM,
            "default_query_instruction": prompts.DEFAULT_QUERY_INSTRUCTION,
            "default_rerank_instruction": prompts.DEFAULT_RERANK_INSTRUCTION,
            "instructions": instruction_choices(),
        },
        headers={"Cache-Control": "no-cache"},
    )


@router.get("/playground/{name}")  # after config.json, which it would shadow
async def asset(name: str) -> Response:
    if name not in STATIC_FILES:
        raise EngineError(ErrorKind.ROUTE_NOT_FOUND, f"no playground file {name!r}")
    return _static(name)


class ServerTimingMiddleware:
    """Add ``Server-Timing: app;dur=<ms>`` to every response: the time from the request's arrival
    to its response headers, as the server measured it (the page shows it next to each result)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - start) * 1000.0
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", f"app;dur={ms:.1f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapper)


__all__ = ["STATIC_FILES", "ServerTimingMiddleware", "instruction_choices", "router"]
