"""TEI's dialect against a live server: ``huggingface_hub.InferenceClient`` on ``/embed``, and the
``/embed``, ``/rerank``, ``/tokenize`` and ``/info`` bodies TEI client code sends. Every vector
and score equals the library's; errors come in TEI's shape."""

from __future__ import annotations

import httpx
import numpy as np
from huggingface_hub import InferenceClient

RERANKER_ID = "tiny-reranker"
TEXTS = ["What is the capital of China?", "Explain gravity", "The capital of China is Beijing."]
DOCS = ["The capital of China is Beijing.", "Gravity is a force that attracts bodies.", "Paris is in France."]


def is_tei_error(r: httpx.Response, status: int, needle: str) -> bool:
    body = r.json()
    return r.status_code == status and set(body) == {"error", "error_type"} and needle in body["error"]


def test_inference_client_feature_extraction(server, embedder):
    client = InferenceClient(model=server.url + "/embed", timeout=60)
    one = client.feature_extraction(TEXTS[0])
    assert one.dtype == np.float32 and np.array_equal(one, embedder.encode([TEXTS[0]]))
    many = client.feature_extraction(TEXTS, normalize=True, truncate=True)
    assert np.array_equal(many, embedder.encode(TEXTS))
    queries = client.feature_extraction(TEXTS, prompt_name="query")
    assert np.array_equal(queries, embedder.encode_queries(TEXTS))
    root = InferenceClient(model=server.url, timeout=60)  # TEI's README way: the root route
    assert np.array_equal(root.feature_extraction(TEXTS), embedder.encode(TEXTS))


def test_embed_bodies(server, embedder):
    ids = [embedder.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    with server.client() as c:
        assert np.array_equal(
            np.array(c.post("/embed", json={"inputs": ids}).json(), np.float32), embedder.encode(TEXTS)
        )
        single = c.post("/embed", json={"inputs": ids[1]}).json()
        assert np.array_equal(np.array(single, np.float32), embedder.encode([TEXTS[1]]))
        mixed = c.post("/embed", json={"inputs": [TEXTS[0], ids[1], TEXTS[2]]}).json()
        assert np.array_equal(np.array(mixed, np.float32), embedder.encode(TEXTS))
        docs = c.post("/embed", json={"inputs": DOCS, "prompt_name": "document", "dimensions": 32}).json()
        assert np.array_equal(np.array(docs, np.float32), embedder.encode_documents(DOCS, dim=32))

        long_text = "word " * (embedder.max_length + 10)
        r = c.post("/embed", json={"inputs": [long_text]})  # TEI's default: no truncation
        assert is_tei_error(r, 400, str(embedder.max_length)) and r.json()["error_type"] == "Validation"
        cut = c.post("/embed", json={"inputs": [long_text], "truncate": True}).json()
        assert np.array_equal(np.array(cut, np.float32), embedder.encode([long_text]))

        r = c.post("/embed", json={"inputs": "x", "prompt_name": "nope"})
        assert is_tei_error(r, 400, "'query'")
        assert is_tei_error(c.post("/embed", json={"inputs": "x", "normalize": False}), 400, "normalize")
        r = c.post("/embed", json={"inputs": "x", "truncate": True, "truncation_direction": "Left"})
        assert is_tei_error(r, 400, "Left")
        assert is_tei_error(c.post("/embed", json={"inputs": []}), 422, "inputs")
        assert is_tei_error(c.post("/embed", json={"inputs": [[embedder.vocab_size]]}), 400, "vocabulary")


def test_rerank_tei_and_v1_bodies(server, reranker):
    query = TEXTS[0]
    want = reranker.score(query, DOCS)
    order = [int(i) for i in np.argsort(-want, kind="stable")]
    with server.client() as c:
        res = c.post("/rerank", json={"query": query, "texts": DOCS, "return_text": True}).json()
        assert [r["index"] for r in res] == order
        assert [r["score"] for r in res] == [float(want[i]) for i in order]
        assert [r["text"] for r in res] == [DOCS[i] for i in order]
        raw = c.post("/rerank", json={"query": query, "texts": DOCS, "raw_scores": True}).json()
        logits = np.array([r["score"] for r in sorted(raw, key=lambda r: r["index"])])
        assert np.allclose(1.0 / (1.0 + np.exp(-logits)), want, rtol=0, atol=1e-6)
        assert [r["index"] for r in raw] == order and "text" not in raw[0]

        v1 = c.post("/rerank", json={"model": RERANKER_ID, "query": query, "documents": DOCS, "top_n": 1})
        assert v1.json()["results"] == [{"index": order[0], "relevance_score": float(want[order[0]])}]
        bad_v1 = c.post("/rerank", json={"query": query, "documents": DOCS, "top_n": 0})
        assert bad_v1.status_code == 422 and set(bad_v1.json()["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
        assert is_tei_error(c.post("/rerank", json={"query": query, "texts": []}), 422, "texts")
        assert is_tei_error(c.post("/rerank", content=b"{not json"), 422, "JSON")
        long_doc = "word " * (reranker.max_length + 10)
        assert is_tei_error(c.post("/rerank", json={"query": query, "texts": [long_doc]}), 400, "limit")


def test_tokenize(server, embedder):
    text = TEXTS[0]
    prompt = embedder.prompts["query"]
    with server.client() as c:
        plain = c.post("/tokenize", json={"inputs": text, "add_special_tokens": False}).json()
        full = c.post("/tokenize", json={"inputs": [text, TEXTS[1]]}).json()
        queried = c.post("/tokenize", json={"inputs": [text], "prompt_name": "query"}).json()
    assert [t["id"] for t in plain[0]] == embedder.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert "".join(t["text"] for t in plain[0]) == text and not any(t["special"] for t in plain[0])
    assert [t["start"] for t in plain[0][1:]] == [t["stop"] for t in plain[0][:-1]]
    assert [[t["id"] for t in toks] for toks in full] == embedder.tokenize([text, TEXTS[1]])
    assert full[0][-1]["special"] and full[0][-1]["start"] is None and full[0][-1]["text"] == "<|endoftext|>"
    assert [t["id"] for t in queried[0]] == embedder.tokenize([text], prompt=prompt)[0]
    assert "".join(t["text"] for t in queried[0] if not t["special"]) == prompt + text


def test_info(server, embedder):
    with server.client() as c:
        info = c.get("/info").json()
    assert info["model_id"] == "tiny-embedder" and info["max_input_length"] == embedder.max_length
    assert info["model_type"] == {"embedding": {"pooling": "last_token"}}
    assert info["prompts"] == embedder.prompts and info["auto_truncate"] is False


def test_api_key_in_tei_shape(make_server, embedder):
    with make_server(api_key="secret") as srv, srv.client() as c:
        for path in ("/embed", "/", "/tokenize", "/info"):
            r = c.post(path, json={"inputs": "x"}) if path != "/info" else c.get(path)
            assert is_tei_error(r, 401, "API key"), (path, r.text)
        # /rerank is shared with the v1 alias: its 401 (sent before the body is read) is OpenAI's
        assert c.post("/rerank", json={"query": "q", "texts": ["d"]}).status_code == 401
        ok = c.post("/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer secret"})
        assert np.array_equal(np.array(ok.json(), np.float32), embedder.encode(["x"]))
        client = InferenceClient(model=srv.url + "/embed", token="secret", timeout=60)
        assert np.array_equal(client.feature_extraction("x"), embedder.encode(["x"]))
