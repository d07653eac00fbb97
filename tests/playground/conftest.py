"""Playground fixtures: real servers on loopback over the tiny models, and Debian's chromium driven
by Playwright (skipped with a reason when either is missing; CI installs both)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from embedforge import Embedder, Reranker
from embedforge.server import ServerSettings, create_app
from server.conftest import LiveServer as Live  # tests/ is on the path (pyproject)
from server.conftest import live_server

EMBEDDER_ID = "tiny-embedder"
RERANKER_ID = "tiny-reranker"
CHROMIUM = os.environ.get("EMBEDFORGE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots (gitignored)


@pytest.fixture(scope="session")
def embedder(tiny_embedder_dir: Path) -> Embedder:
    return Embedder.from_pretrained(tiny_embedder_dir)


@pytest.fixture(scope="session")
def reranker(tiny_reranker_dir: Path) -> Reranker:
    return Reranker.from_pretrained(tiny_reranker_dir)


@pytest.fixture(scope="session")
def make_server(
    tiny_embedder_dir: Path, tiny_reranker_dir: Path, embedder: Embedder, reranker: Reranker
) -> Callable[..., contextlib.AbstractContextManager[Live]]:
    """``with make_server(api_key="k") as srv:`` — a live server over the session's models.
    ``embedder=`` / ``reranker=`` / ``index=`` replace the served objects."""

    def make(*, index: Any = None, **overrides: Any) -> contextlib.AbstractContextManager[Live]:
        emb = overrides.pop("embedder", embedder)
        rr = overrides.pop("reranker", reranker)
        if "index_dir" in overrides:  # what `serve --index DIR` sets: the app opens the index itself
            overrides["index"] = str(overrides.pop("index_dir"))
        settings = ServerSettings(
            embedder=str(tiny_embedder_dir) if emb is not None else None,
            reranker=str(tiny_reranker_dir) if rr is not None else None,
            embedder_name=EMBEDDER_ID if emb is not None else None,
            reranker_name=RERANKER_ID if rr is not None else None,
            **overrides,
        )
        app = create_app(settings, embedder=emb, reranker=rr)
        if index is not None:
            app.state.server.index = index
        return live_server(app)

    return make


@pytest.fixture(scope="module")
def server(make_server) -> Iterator[Live]:
    with make_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium (never a browser download), headless. Module-scoped: Playwright's sync API
    keeps an asyncio loop running in the main thread while it is open, which would break every later
    test module that calls ``asyncio.run``."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"chromium not found at {CHROMIUM} (CI installs it: apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; no `playwright install` needed)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_page(browser) -> Iterator[Callable[..., Any]]:
    """``open_page(url, width=1280)`` — a fresh page on the playground, once it is ready; browser
    console errors fail the test."""
    contexts = []
    errors: list[str] = []

    def open_(url: str, width: int = 1280, height: int = 900) -> Any:
        ctx = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready=true]")
        return page

    yield open_
    for ctx in contexts:
        ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
