"""``POST /v1/search`` and the Search tab over a real on-disk index built with the tiny embedder:
the route returns what ``Index.search`` returns, filters and reranks like it, and the page shows it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embedforge import Embedder, Reranker

index_mod = pytest.importorskip("embedforge.index", reason="the index package (issue 10) is not present")
pytest.importorskip("lancedb", reason="lancedb is not installed (the [index] extra)")

CORPUS = [
    {"id": "d1", "title": "China", "text": "The capital of China is Beijing.", "year": 2010},
    {"id": "d2", "title": "", "text": "Gravity attracts two bodies towards each other.", "year": 2018},
    {"id": "d3", "title": "Hamlet", "text": "Hamlet is a tragedy by William Shakespeare.", "year": 2020},
    {"id": "d4", "title": "", "text": "Paris is the capital of France.", "year": 2016},
    {"id": "d5", "title": "Tea", "text": "Green tea comes from China.", "year": 2001},
]
QUERY = "What is the capital of China?"


@pytest.fixture(scope="module")
def index(tmp_path_factory, embedder: Embedder):
    path: Path = tmp_path_factory.mktemp("playground-index") / "idx"
    index_mod.Index.build(CORPUS, path, embedder, show_progress=False)
    return index_mod.Index.open(path, embedder)


@pytest.fixture(scope="module")
def search_server(make_server, index) -> Iterator:
    with make_server(index=index) as srv:
        yield srv


def search(srv, body: dict) -> httpx.Response:
    return httpx.post(srv.url + "/v1/search", json=body, timeout=60)


def test_search_returns_what_the_index_returns(search_server, index):
    r = search(search_server, {"query": QUERY, "k": 3})
    assert r.status_code == 200, r.text
    got = r.json()["data"]
    expected = index.search(QUERY, 3)
    assert [h["id"] for h in got] == [h.id for h in expected]
    assert [h["score"] for h in got] == pytest.approx([h.score for h in expected], abs=1e-6)
    assert [h["rank"] for h in got] == [1, 2, 3]
    by_id = {d["id"]: d for d in CORPUS}
    for h in got:
        assert h["text"] == by_id[h["id"]]["text"] and h["metadata"]["year"] == by_id[h["id"]]["year"]
        assert h["rerank_score"] is None


def test_search_filters_on_metadata(search_server, index):
    got = search(search_server, {"query": QUERY, "k": 5, "where": "year > 2015"}).json()["data"]
    assert {h["id"] for h in got} == {"d2", "d3", "d4"}
    assert [h["id"] for h in got] == [h.id for h in index.search(QUERY, 5, where="year > 2015")]


def test_a_bad_filter_is_a_400_naming_it(search_server):
    r = search(search_server, {"query": QUERY, "where": "year >>> 2"})
    assert r.status_code == 400, r.text
    assert "year >>> 2" in r.json()["error"]["message"] and r.json()["error"]["param"] == "where"


def test_search_with_rerank_equals_the_index_with_the_reranker(search_server, index, reranker: Reranker):
    body = {"query": QUERY, "k": 3, "rerank": True, "rerank_top": 4}
    got = search(search_server, body).json()["data"]
    expected = index.search(QUERY, 3, rerank=reranker, rerank_top=4)
    assert [h["id"] for h in got] == [h.id for h in expected]
    assert [h["rerank_score"] for h in got] == pytest.approx([h.rerank_score for h in expected], abs=1e-6)


def test_search_shares_the_key(make_server, index):
    with make_server(index=index, api_key="secret") as srv:
        assert search(srv, {"query": QUERY}).status_code == 401
        r = httpx.post(
            srv.url + "/v1/search", json={"query": QUERY}, headers={"Authorization": "Bearer secret"}
        )
        assert r.status_code == 200


@pytest.mark.parametrize("width", [1280, 375], ids=["desktop", "phone"])
def test_search_tab_shows_the_hits(search_server, index, open_page, artifacts, width):
    page = open_page(search_server.url, width=width)
    tab = page.get_by_role("tab", name="Search")
    assert tab.is_visible()
    tab.click()
    page.get_by_test_id("search-query").fill(QUERY)
    page.get_by_test_id("search-k").fill("3")
    page.get_by_test_id("search-where").fill("year > 2005")
    page.get_by_test_id("search-run").click()
    rows = page.get_by_test_id("search-results").locator("li")
    rows.first.wait_for()
    expected = index.search(QUERY, 3, where="year > 2005")
    assert rows.count() == len(expected)
    for k, hit in enumerate(expected):
        text = rows.nth(k).inner_text()
        assert f"id {hit.id}" in text and hit.text in text and "year: " in text
        assert float(rows.nth(k).get_attribute("data-score")) == pytest.approx(hit.score, abs=1e-6)
    assert page.get_by_test_id("error").is_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.screenshot(path=str(artifacts / f"search-{width}.png"), full_page=True)
    page.get_by_test_id("search-where").fill("nope ==")
    page.get_by_test_id("search-run").click()
    page.get_by_test_id("error").wait_for()
    assert "(HTTP 400)" in page.get_by_test_id("error").inner_text()


def test_the_index_setting_opens_the_index_and_shares_the_served_embedder(make_server, index, embedder):
    # `embedforge serve --index DIR` sets this field: the app opens the index at start-up and, since the
    # served embedder is the model that built it, searches with that one object (no second copy)
    with make_server(index_dir=index.dir) as srv:
        r = search(srv, {"query": QUERY, "k": 3})
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()["data"]] == [h.id for h in index.search(QUERY, 3)]
        assert srv.app.state.server.index.embedder is embedder


def test_a_bad_index_directory_is_a_start_up_error(tmp_path, tiny_embedder_dir):
    from embedforge.server import create_app
    from embedforge.server.settings import ServerSettings

    with pytest.raises(Exception, match="manifest|index"):
        create_app(ServerSettings(embedder=str(tiny_embedder_dir), index=str(tmp_path / "missing")))
