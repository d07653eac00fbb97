"""Integration fixtures: the tiny models loaded once, and one live server over them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedforge import Embedder, Reranker
from embedforge.server import ServerSettings, create_app
from server.conftest import LiveServer, live_server  # tests/ is on the path (pyproject)

EMBEDDER_ID = "tiny-embedder"
RERANKER_ID = "tiny-reranker"


@pytest.fixture(scope="session")
def embedder(tiny_embedder_dir: Path) -> Embedder:
    return Embedder.from_pretrained(tiny_embedder_dir)


@pytest.fixture(scope="session")
def reranker(tiny_reranker_dir: Path) -> Reranker:
    return Reranker.from_pretrained(tiny_reranker_dir)


@pytest.fixture(scope="module")
def server(tiny_embedder_dir: Path, tiny_reranker_dir: Path, embedder, reranker) -> Iterator[LiveServer]:
    settings = ServerSettings(
        embedder=str(tiny_embedder_dir),
        reranker=str(tiny_reranker_dir),
        embedder_name=EMBEDDER_ID,
        reranker_name=RERANKER_ID,
        api_key="secret",
        max_request_inputs=4,  # the clients must split larger batches
    )
    with live_server(create_app(settings, embedder=embedder, reranker=reranker)) as srv:
        yield srv
