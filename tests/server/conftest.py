"""Server fixtures: the tiny models loaded once, and real uvicorn servers on free loopback ports."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from embedforge import Embedder, Reranker
from embedforge.server import ServerSettings, create_app


@dataclass
class LiveServer:
    """A uvicorn server running ``app`` in a thread on 127.0.0.1."""

    app: FastAPI
    url: str
    server: uvicorn.Server

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def live_server(app: FastAPI, graceful_timeout_s: int = 30) -> Iterator[LiveServer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port chosen by the OS
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=graceful_timeout_s)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server failed to start")
        thread.join(0.01)
    try:
        yield LiveServer(app, f"http://127.0.0.1:{port}", server)
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


@pytest.fixture(scope="session")
def embedder(tiny_embedder_dir: Path) -> Embedder:
    return Embedder.from_pretrained(tiny_embedder_dir)


@pytest.fixture(scope="session")
def reranker(tiny_reranker_dir: Path) -> Reranker:
    return Reranker.from_pretrained(tiny_reranker_dir)


EMBEDDER_ID = "tiny-embedder"  # the ids clients send as `model` (repeated in the test modules)
RERANKER_ID = "tiny-reranker"


@pytest.fixture(scope="session")
def make_server(
    tiny_embedder_dir: Path, tiny_reranker_dir: Path, embedder: Embedder, reranker: Reranker
) -> Callable[..., contextlib.AbstractContextManager[LiveServer]]:
    """``with make_server(api_key="k", max_queue=1) as srv:`` — a live server over the session's
    models (loaded once) with the given settings."""

    def make(**overrides) -> contextlib.AbstractContextManager[LiveServer]:
        settings = ServerSettings(
            embedder=str(tiny_embedder_dir),
            reranker=str(tiny_reranker_dir),
            embedder_name=EMBEDDER_ID,
            reranker_name=RERANKER_ID,
            **overrides,
        )
        app = create_app(settings, embedder=embedder, reranker=reranker)
        return live_server(app, settings.graceful_timeout_s)

    return make


@pytest.fixture(scope="module")
def server(make_server) -> Iterator[LiveServer]:
    """The default server (no API key, default limits), shared by a test module."""
    with make_server() as srv:
        yield srv


@pytest.fixture(scope="session")
def serve_app() -> Callable[[FastAPI], contextlib.AbstractContextManager[LiveServer]]:
    """``with serve_app(app) as srv:`` — any app on a live loopback server."""
    return live_server
