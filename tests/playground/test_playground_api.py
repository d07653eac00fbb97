"""The playground's HTTP side on a real server: the page and its files, the config, ``/v1/tokenize``
(checked against the library's own tokenization), the ``Server-Timing`` latency, ``/v1/search``
without an index."""

from __future__ import annotations

import re

import httpx
import pytest

from embedforge import Embedder
from embedforge.prompts import ENDOFTEXT, QWEN3_RETRIEVAL_INSTRUCTIONS, QWEN3_STS_INSTRUCTION
from embedforge.server.routes.playground import STATIC_FILES

EMBEDDER_ID, RERANKER_ID = "tiny-embedder", "tiny-reranker"  # the ids the conftest's servers use
TESTIDS = [
    "queries",
    "documents",
    "run",
    "matrix",
    "instruction",
    "dim",
    "rerank-query",
    "rerank-documents",
    "rerank-run",
    "rerank-results",
    "search-query",
    "search-run",
    "search-results",
    "tokens",
    "api-key",
    "error",
]


def post(srv, path: str, body: dict, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(srv.url + path, json=body, headers=headers, timeout=60)


# --- the page --------------------------------------------------------------------------------------
def test_page_is_served_with_every_test_id_and_no_outside_resource(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for tid in TESTIDS:
        assert f'data-testid="{tid}"' in r.text, tid
    for name in STATIC_FILES:
        body = httpx.get(f"{server.url}/playground/{name}").text
        # nothing loaded from elsewhere: no absolute URLs, no protocol-relative ones
        assert not re.search(r"""(src|href)=["'](https?:)?//""", body), name
        assert "@import" not in body and "url(http" not in body, name


@pytest.mark.parametrize("name", ["nope.js", "..%2Fapp.py", "config.jsonx"])
def test_unknown_playground_files_are_404(server, name):
    r = httpx.get(f"{server.url}/playground/{name}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_config_lists_the_official_instructions_with_their_sides(server):
    cfg = httpx.get(server.url + "/playground/config.json").json()
    assert cfg["auth_required"] is False and cfg["search"] is False and cfg["min_dimensions"] == 32
    by_text = {c["instruction"]: c for c in cfg["instructions"]}
    scifact = QWEN3_RETRIEVAL_INSTRUCTIONS["SciFact"]
    assert "SciFact" in by_text[scifact]["tasks"] and by_text[scifact]["both_sides"] is False
    assert "STSBenchmark" in by_text[QWEN3_STS_INSTRUCTION]["tasks"]
    assert by_text[QWEN3_STS_INSTRUCTION]["both_sides"] is True
    assert len(by_text) == len(cfg["instructions"])  # one entry per distinct text


def test_config_says_when_a_key_is_needed_and_stays_public(make_server):
    with make_server(api_key="secret") as srv:
        assert httpx.get(srv.url + "/").status_code == 200
        assert httpx.get(srv.url + "/playground/config.json").json()["auth_required"] is True


def test_responses_carry_server_timing(server):
    r = post(server, "/v1/embeddings", {"input": ["a"], "input_type": "query"})
    assert r.status_code == 200
    assert re.fullmatch(r"app;dur=\d+(\.\d+)?", r.headers["server-timing"])


# --- /v1/tokenize ------------------------------------------------------------------------------------
def test_tokenize_query_equals_the_embedders_tokens_and_ends_with_endoftext(server, embedder):
    text = "What is the capital of China?"
    r = post(server, "/v1/tokenize", {"input": [text], "input_type": "query"})
    assert r.status_code == 200, r.text
    body = r.json()
    prompt = embedder.query_prompt()
    expected = embedder.tokenize([text], prompt=prompt)[0]
    seq = body["data"][0]
    assert body["model"] == EMBEDDER_ID and body["side"] == "query" and body["prompt"] == prompt
    assert seq["ids"] == expected and seq["count"] == len(expected)
    assert seq["tokens"][-1] == ENDOFTEXT and seq["pieces"][-1] == ENDOFTEXT
    assert seq["truncated"] is False and seq["cut_at"] is None
    assert seq["untruncated_count"] == len(expected)
    kinds = {s["kind"]: (s["start"], s["stop"]) for s in seq["segments"]}
    n_prompt = len(embedder.raw_ids([prompt])[0])
    assert kinds["prompt"] == (0, n_prompt)
    assert kinds["text"] == (n_prompt, len(expected) - 1)
    assert kinds["special"] == (len(expected) - 1, len(expected))
    assert "".join(seq["pieces"][:n_prompt]) == prompt
    assert body["usage"]["total_tokens"] == len(expected)


def test_tokenize_sides_follow_the_embeddings_route(server, embedder):
    instr = QWEN3_STS_INSTRUCTION
    doc = post(server, "/v1/tokenize", {"input": "Beijing.", "input_type": "document"}).json()
    assert doc["prompt"] == "" and doc["data"][0]["ids"] == embedder.tokenize(["Beijing."])[0]
    sym = post(
        server, "/v1/tokenize", {"input": ["Beijing."], "input_type": "document", "instruction": instr}
    )
    assert sym.json()["prompt"] == f"Instruct: {instr}\nQuery:"
    assert (
        sym.json()["data"][0]["ids"]
        == embedder.tokenize(["Beijing."], prompt=f"Instruct: {instr}\nQuery:")[0]
    )


def test_tokenize_shows_where_truncation_cut(make_server, tiny_embedder_dir):
    short = Embedder.from_pretrained(tiny_embedder_dir, max_length=12)
    text = " ".join(["word"] * 40)
    with make_server(embedder=short) as srv:
        seq = post(srv, "/v1/tokenize", {"input": [text]}).json()["data"][0]
    raw = short.raw_ids([text])[0]
    assert seq["ids"] == short.tokenize([text])[0] and seq["count"] == 12
    assert seq["ids"][:11] == raw[:11] and seq["tokens"][-1] == ENDOFTEXT
    assert seq["truncated"] is True and seq["untruncated_count"] == len(raw) + 1
    assert seq["cut_at"] == 11


def test_tokenize_reranker_pairs_equal_the_rerankers_template(server, reranker):
    query, docs = "capital of China?", ["Beijing is the capital.", "Gravity."]
    body = post(server, "/v1/tokenize", {"query": query, "documents": docs}).json()
    assert body["model"] == RERANKER_ID and body["side"] == "rerank"
    expected = reranker.tokenize_pairs([(query, d) for d in docs])
    n_pre, n_suf = len(reranker.prefix_ids), len(reranker.suffix_ids)
    for seq, ids in zip(body["data"], expected, strict=True):
        assert seq["ids"] == ids and seq["truncated"] is False
        assert seq["segments"][0] == {"kind": "template", "start": 0, "stop": n_pre}
        assert seq["segments"][-1] == {"kind": "template", "start": len(ids) - n_suf, "stop": len(ids)}
        assert "".join(seq["pieces"][:n_pre]).startswith("<|im_start|>system")
        assert "<Document>: " in "".join(seq["pieces"])


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"input": ["a"], "query": "q", "documents": ["d"]}, 422, "either `input`"),
        ({"query": "q"}, 422, "both `query` and `documents`"),
        ({"input": []}, 422, "input"),
        ({"input": ["a"], "input_type": "passage"}, 422, "input_type"),
        ({"input": ["a"], "model": "nope"}, 404, "'nope' is not served"),
    ],
)
def test_tokenize_bad_requests_are_named(server, body, status, words):
    r = post(server, "/v1/tokenize", body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_tokenize_shares_the_key_and_the_limits(make_server):
    with make_server(api_key="secret", max_request_inputs=2) as srv:
        assert post(srv, "/v1/tokenize", {"input": ["a"]}).status_code == 401
        assert post(srv, "/v1/tokenize", {"input": ["a"]}, key="wrong").status_code == 401
        assert post(srv, "/v1/tokenize", {"input": ["a"]}, key="secret").status_code == 200
        r = post(srv, "/v1/tokenize", {"input": ["a", "b", "c"]}, key="secret")
        assert r.status_code == 413 and "limit of 2" in r.json()["error"]["message"]


# --- /v1/search without an index ----------------------------------------------------------------
def test_search_without_an_index_names_the_flag(server):
    r = post(server, "/v1/search", {"query": "q"})
    assert r.status_code == 404 and "--index" in r.json()["error"]["message"]


def test_search_validates_its_body(server):
    r = post(server, "/v1/search", {"query": "q", "k": 0})
    assert r.status_code == 422 and r.json()["error"]["param"] == "k"
