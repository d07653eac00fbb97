"""The playground in a real browser (Debian's chromium driven by Playwright) against a real server:
the numbers on the page equal the library's for the same inputs, the token view shows the end
token, API errors appear in words; at desktop and phone widths, with screenshots as artifacts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from embedforge.prompts import ENDOFTEXT, QWEN3_RETRIEVAL_INSTRUCTIONS

QUERIES = ["What is the capital of China?", "Explain gravity", "Who wrote Hamlet?"]
DOCS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Hamlet is a tragedy by William Shakespeare.",
    "Paris is the capital of France.",
]
# The page shows scores with 4 decimals from float32 vectors summed in float64; the library sums
# in float32. Both round the same number, so they agree to half a unit of the 4th decimal (+ slack
# for a value sitting on a rounding boundary).
SHOWN = 0.5e-4 + 1e-6


def fill_compare(page, queries=QUERIES, docs=DOCS) -> None:
    page.get_by_test_id("queries").fill("\n".join(queries))
    page.get_by_test_id("documents").fill("\n".join(docs))


def read_matrix(page, n_q: int, n_d: int) -> np.ndarray:
    page.get_by_test_id(f"cell-{n_q - 1}-{n_d - 1}").wait_for()
    return np.array(
        [[float(page.get_by_test_id(f"cell-{i}-{j}").inner_text()) for j in range(n_d)] for i in range(n_q)]
    )


def run_and_wait(page, button: str, result: str) -> None:
    """Click ``button`` and wait until the request is over (buttons are disabled meanwhile)."""
    page.get_by_test_id(button).click()
    page.wait_for_function(
        "([b]) => !document.querySelector(`[data-testid=${b}]`).disabled", arg=[button], timeout=60_000
    )


def ranks(row: np.ndarray) -> np.ndarray:
    order = np.argsort(-row, kind="stable")
    out = np.empty(len(row), dtype=int)
    out[order] = np.arange(len(row))
    return out


@pytest.mark.parametrize("width", [1280, 375], ids=["desktop", "phone"])
def test_compare_matrix_equals_the_library(server, open_page, embedder, artifacts, width):
    page = open_page(server.url, width=width)
    fill_compare(page)
    run_and_wait(page, "run", "matrix")
    assert page.get_by_test_id("error").is_hidden(), page.get_by_test_id("error").inner_text()
    shown = read_matrix(page, len(QUERIES), len(DOCS))
    expected = embedder.encode_queries(QUERIES) @ embedder.encode_documents(DOCS).T  # (n_q, n_d)
    np.testing.assert_allclose(shown, expected, rtol=0, atol=SHOWN)
    assert "Server time: queries" in page.get_by_test_id("compare-meta-latency").inner_text()
    # the layout fits the screen: only the matrix's own box may scroll sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.screenshot(path=str(artifacts / f"compare-{width}.png"), full_page=True)


def test_instruction_and_matryoshka_dimension(server, open_page, embedder, artifacts):
    page = open_page(server.url)
    fill_compare(page)
    scifact = QWEN3_RETRIEVAL_INSTRUCTIONS["SciFact"]
    page.get_by_test_id("instruction").select_option(label=f"SciFact: {scifact}")
    assert page.get_by_test_id("dim").get_attribute("min") == "32"  # the library's smallest Matryoshka dim
    page.get_by_test_id("dim").fill("32")
    run_and_wait(page, "run", "matrix")
    assert page.get_by_test_id("error").is_hidden(), page.get_by_test_id("error").inner_text()
    shown = read_matrix(page, len(QUERIES), len(DOCS))
    q = embedder.encode_queries(QUERIES, instruction=scifact, dim=32)
    d = embedder.encode_documents(DOCS, dim=32)  # retrieval: documents take no instruction
    np.testing.assert_allclose(shown, q @ d.T, rtol=0, atol=SHOWN)
    full = embedder.encode_queries(QUERIES, instruction=scifact) @ embedder.encode_documents(DOCS).T
    reduced = q @ d.T
    for i in range(len(QUERIES)):
        moved = ranks(full[i]) - ranks(reduced[i])  # > 0: the document moved up at 32 dimensions
        for j in range(len(DOCS)):
            cell = page.get_by_test_id(f"cell-{i}-{j}")
            assert int(cell.get_attribute("data-rank-change")) == moved[j]
    page.screenshot(path=str(artifacts / "compare-instruction-dim32.png"), full_page=True)


def test_custom_instruction_goes_on_queries(server, open_page, embedder):
    page = open_page(server.url)
    fill_compare(page, QUERIES[:2], DOCS[:2])
    page.get_by_test_id("instruction").select_option("custom")
    page.get_by_test_id("instruction-text").fill("Find the matching fact")
    run_and_wait(page, "run", "matrix")
    shown = read_matrix(page, 2, 2)
    q = embedder.encode_queries(QUERIES[:2], instruction="Find the matching fact")
    np.testing.assert_allclose(shown, q @ embedder.encode_documents(DOCS[:2]).T, rtol=0, atol=SHOWN)


@pytest.mark.parametrize("width", [1280, 375], ids=["desktop", "phone"])
def test_rerank_order_and_scores_equal_the_library(server, open_page, reranker, artifacts, width):
    page = open_page(server.url, width=width)
    page.get_by_role("tab", name="Rerank").click()
    page.get_by_test_id("rerank-query").fill(QUERIES[0])
    page.get_by_test_id("rerank-documents").fill("\n".join(DOCS))
    run_and_wait(page, "rerank-run", "rerank-results")
    rows = page.get_by_test_id("rerank-results").locator("li")
    assert rows.count() == len(DOCS)
    expected = reranker.rank(QUERIES[0], DOCS)
    for k, hit in enumerate(expected):
        row = rows.nth(k)
        assert int(row.get_attribute("data-index")) == hit.index
        assert float(row.get_attribute("data-score")) == pytest.approx(hit.score, rel=1e-6, abs=1e-7)
        assert hit.document in row.inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.screenshot(path=str(artifacts / f"rerank-{width}.png"), full_page=True)


def test_token_view_shows_the_end_token_and_the_count(server, open_page, embedder, artifacts):
    page = open_page(server.url)
    page.get_by_role("tab", name="Tokens").click()
    page.get_by_test_id("tokens-input").fill("What is the capital of China?")
    run_and_wait(page, "tokens-run", "tokens")
    tokens = page.get_by_test_id("tokens")
    chips = tokens.locator(".chips .chip")
    expected = embedder.tokenize(["What is the capital of China?"], prompt=embedder.query_prompt())[0]
    assert chips.count() == len(expected)
    assert ENDOFTEXT in chips.last.inner_text()
    assert chips.last.get_attribute("class") == "chip special"
    assert str(expected[-1]) in chips.last.inner_text()
    assert page.get_by_test_id("token-count").inner_text().startswith(f"{len(expected)} tokens")
    page.screenshot(path=str(artifacts / "tokens.png"), full_page=True)


def test_token_view_shows_the_reranker_template(server, open_page, reranker):
    page = open_page(server.url)
    page.get_by_role("tab", name="Tokens").click()
    page.get_by_test_id("tokens-side").select_option("rerank")
    page.get_by_test_id("tokens-input").fill("capital of China?")
    page.get_by_test_id("tokens-document").fill("Beijing.")
    run_and_wait(page, "tokens-run", "tokens")
    expected = reranker.tokenize_pairs([("capital of China?", "Beijing.")])[0]
    chips = page.get_by_test_id("tokens").locator(".chips .chip")
    assert chips.count() == len(expected)
    assert page.get_by_test_id("tokens").locator(".chips .chip.template").count() == (
        len(reranker.prefix_ids) + len(reranker.suffix_ids)
    )


def test_a_wrong_key_shows_an_error_and_the_right_key_works(make_server, open_page, embedder, artifacts):
    with make_server(api_key="secret") as srv:
        page = open_page(srv.url)
        key = page.get_by_test_id("api-key")
        assert key.is_visible()
        key.fill("wrong")
        key.press("Enter")
        fill_compare(page, QUERIES[:1], DOCS[:1])
        run_and_wait(page, "run", "matrix")
        error = page.get_by_test_id("error")
        assert error.is_visible()
        assert "Not authorized" in error.inner_text() and "401" in error.inner_text()
        assert page.get_by_test_id("cell-0-0").count() == 0
        page.screenshot(path=str(artifacts / "wrong-key.png"), full_page=True)
        key.fill("secret")
        key.press("Enter")
        run_and_wait(page, "run", "matrix")
        assert error.is_hidden()
        shown = read_matrix(page, 1, 1)
        expected = embedder.encode_queries(QUERIES[:1]) @ embedder.encode_documents(DOCS[:1]).T
        np.testing.assert_allclose(shown, expected, rtol=0, atol=SHOWN)
        assert "EMBEDFORGE_API_KEY" in page.locator("#compare-meta pre.curl").text_content()
        assert (
            "secret" not in page.locator("#compare-meta pre.curl").text_content()
        )  # never copied into a snippet


def test_too_many_inputs_shows_413_in_words(make_server, open_page):
    with make_server(max_request_inputs=2) as srv:
        page = open_page(srv.url)
        page.get_by_role("tab", name="Rerank").click()
        page.get_by_test_id("rerank-documents").fill("\n".join(DOCS[:3]))
        run_and_wait(page, "rerank-run", "rerank-results")
        error = page.get_by_test_id("error").inner_text()
        assert "Request too large (HTTP 413)" in error and "limit of 2" in error


def test_snippets_are_the_request_on_screen(server, open_page):
    page = open_page(server.url)
    fill_compare(page, QUERIES[:1], DOCS[:1])
    run_and_wait(page, "run", "matrix")
    curl = page.locator("#compare-meta pre.curl").text_content()
    python = page.locator("#compare-meta pre.python").text_content()
    assert f"curl -s {server.url}/v1/embeddings" in curl and '"input_type":"query"' in curl
    assert QUERIES[0] in curl
    assert f'OpenAI(base_url="{server.url}/v1"' in python and "client.embeddings.create(" in python
    assert "extra_body={" in python and '"input_type": "query"' in python


def test_search_tab_is_hidden_without_an_index(server, open_page):
    page = open_page(server.url)
    assert page.get_by_role("tab", name="Search").is_hidden()


def test_an_invalid_request_shows_422_in_words(server, open_page):
    page = open_page(server.url)
    fill_compare(page, QUERIES[:1], DOCS[:1])
    page.get_by_test_id("instruction").select_option("custom")
    page.get_by_test_id("instruction-text").fill("x" * 5000)  # over the schema's 4096 characters
    run_and_wait(page, "run", "matrix")
    error = page.get_by_test_id("error").inner_text()
    assert "Invalid request (HTTP 422)" in error and "instruction" in error


def test_a_full_queue_shows_429_in_words(make_server, open_page):
    with make_server(max_queue=1) as srv:
        page = open_page(srv.url)
        page.get_by_role("tab", name="Rerank").click()
        engine = srv.app.state.server.engine
        with ThreadPoolExecutor(1) as pool, engine.hold():  # the worker takes nothing meanwhile
            waiting = pool.submit(
                httpx.post, srv.url + "/v1/rerank", json={"query": "q", "documents": ["d"]}, timeout=60
            )
            while engine.queue_depths()["reranker"] < 1:  # the queue's one place is taken
                time.sleep(0.01)
            run_and_wait(page, "rerank-run", "rerank-results")
            error = page.get_by_test_id("error").inner_text()
        assert waiting.result().status_code == 200
        assert "The server is busy (its queue is full) (HTTP 429)" in error and "Try again in 1 s" in error
