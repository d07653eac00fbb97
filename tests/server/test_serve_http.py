"""The HTTP API on a real uvicorn server: results equal direct calls, OpenAI client, rerank, models,
health, metrics, and 200 concurrent mixed requests."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import openai
import pytest

EMBEDDER_ID = "tiny-embedder"  # the ids the conftest's servers use (fixtures embedder_id / reranker_id)
RERANKER_ID = "tiny-reranker"

TEXTS = ["What is the capital of China?", "Explain gravity", "The capital of China is Beijing.", "ok"]
DOCS = ["The capital of China is Beijing.", "Gravity is a force that attracts bodies.", "Paris is in France."]


def _vectors(body: dict) -> np.ndarray:
    rows = sorted(body["data"], key=lambda d: d["index"])
    return np.array([r["embedding"] for r in rows], dtype=np.float32)


def test_embeddings_equal_direct_calls_exactly(server, embedder):
    with server.client() as c:
        r = c.post("/v1/embeddings", json={"model": EMBEDDER_ID, "input": TEXTS})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == EMBEDDER_ID
        assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
        assert np.array_equal(_vectors(body), embedder.encode(TEXTS))
        n_tokens = sum(len(x) for x in embedder.tokenize(TEXTS))
        assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}

        single = c.post("/v1/embeddings", json={"model": EMBEDDER_ID, "input": TEXTS[0]}).json()
        assert np.array_equal(_vectors(single), embedder.encode([TEXTS[0]]))

        b64 = c.post(
            "/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64", "dimensions": 32}
        ).json()
        decoded = np.stack(
            [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]]
        )
        assert np.array_equal(decoded, embedder.encode(TEXTS, dim=32))


def test_query_prompt_instruction_and_document_side(server, embedder):
    with server.client() as c:
        q = c.post("/v1/embeddings", json={"input": TEXTS[:2], "input_type": "query"}).json()
        assert np.array_equal(_vectors(q), embedder.encode_queries(TEXTS[:2]))
        qi = c.post(
            "/v1/embeddings", json={"input": TEXTS[:2], "input_type": "query", "instruction": "Find code"}
        ).json()
        assert np.array_equal(_vectors(qi), embedder.encode_queries(TEXTS[:2], instruction="Find code"))
        d = c.post("/v1/embeddings", json={"input": TEXTS[2:], "input_type": "document"}).json()
        assert np.array_equal(_vectors(d), embedder.encode_documents(TEXTS[2:]))
        assert not np.array_equal(_vectors(q), embedder.encode(TEXTS[:2]))  # the prompt did something


def test_token_id_inputs(server, embedder):
    raw = [embedder.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    with server.client() as c:
        many = c.post("/v1/embeddings", json={"input": raw, "input_token_ids": True}).json()
        one = c.post("/v1/embeddings", json={"input": raw[1], "input_token_ids": True}).json()
    assert np.array_equal(_vectors(many), embedder.encode(TEXTS))
    assert np.array_equal(_vectors(one), embedder.encode([TEXTS[1]]))
    assert many["usage"]["prompt_tokens"] == sum(len(x) + 1 for x in raw)


def test_official_openai_client(server, embedder):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    res = client.embeddings.create(model=EMBEDDER_ID, input=TEXTS)  # the client asks for base64
    got = np.array([d.embedding for d in res.data], dtype=np.float32)
    assert np.array_equal(got, embedder.encode(TEXTS))
    res = client.embeddings.create(
        model=EMBEDDER_ID, input="Explain gravity", dimensions=48, encoding_format="float"
    )
    assert np.array_equal(
        np.array(res.data[0].embedding, dtype=np.float32), embedder.encode(["Explain gravity"], dim=48)[0]
    )
    assert res.usage.prompt_tokens == len(embedder.tokenize(["Explain gravity"])[0])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert [m.id for m in client.models.list()] == [EMBEDDER_ID, RERANKER_ID]


def test_rerank_cohere_and_jina_shapes(server, reranker):
    query = "What is the capital of China?"
    want = reranker.score(query, DOCS)
    with server.client() as c:
        r = c.post("/v1/rerank", json={"model": RERANKER_ID, "query": query, "documents": DOCS})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == RERANKER_ID and body["usage"]["total_tokens"] == sum(
            len(x) for x in reranker.tokenize_pairs([(query, d) for d in DOCS])
        )
        order = sorted(range(len(DOCS)), key=lambda i: -want[i])
        assert [x["index"] for x in body["results"]] == order
        assert [x["relevance_score"] for x in body["results"]] == [float(want[i]) for i in order]
        assert all("document" not in x for x in body["results"])

        objs = [{"text": d} for d in DOCS]
        top = c.post(
            "/rerank", json={"query": query, "documents": objs, "top_n": 2, "return_documents": True}
        ).json()
        assert [x["index"] for x in top["results"]] == order[:2]
        assert [x["document"]["text"] for x in top["results"]] == [DOCS[i] for i in order[:2]]

        instructed = c.post(
            "/v1/rerank", json={"query": query, "documents": DOCS, "instruction": "Judge"}
        ).json()
        got = {x["index"]: x["relevance_score"] for x in instructed["results"]}
        assert [got[i] for i in range(len(DOCS))] == reranker.score(query, DOCS, instruction="Judge").tolist()


def test_models_health_and_metrics(server, embedder, reranker):
    with server.client() as c:
        models = c.get("/v1/models").json()
        cards = {m["id"]: m for m in models["data"]}
        assert (
            cards[EMBEDDER_ID]["task"] == "embedding"
            and cards[EMBEDDER_ID]["dimensions"] == embedder.hidden_size
        )
        assert (
            cards[RERANKER_ID]["task"] == "rerank" and cards[RERANKER_ID]["max_length"] == reranker.max_length
        )
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["models"] == [EMBEDDER_ID, RERANKER_ID]
        c.post("/v1/embeddings", json={"input": "count me"})
        c.post("/v1/embeddings", json={"input": 5})  # 422
        text = c.get("/metrics").text
    assert 'embedforge_requests_total{method="POST",route="/v1/embeddings",status="200"}' in text
    assert 'embedforge_requests_total{method="POST",route="/v1/embeddings",status="422"}' in text
    assert 'embedforge_request_latency_seconds_count{route="/v1/embeddings"}' in text
    assert 'embedforge_batch_tokens_count{model="embedder"}' in text
    assert 'embedforge_batch_requests_bucket{le="1.0",model="embedder"}' in text
    assert 'embedforge_queue_depth{model="reranker"} 0.0' in text


async def _mixed_requests(url: str, n: int) -> list[tuple[dict, httpx.Response]]:
    rng = np.random.default_rng(0)
    requests = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            requests.append(
                {
                    "path": "/v1/embeddings",
                    "json": {"input": f"text {i} " + "word " * int(rng.integers(0, 30))},
                }
            )
        elif kind == 1:
            k = int(rng.integers(1, 6))
            requests.append(
                {
                    "path": "/v1/embeddings",
                    "json": {
                        "input": [f"item {i}.{j} " * (j + 1) for j in range(k)],
                        "dimensions": int(rng.choice([32, 48, 64])),
                        "input_type": "query",
                    },
                }
            )
        elif kind == 2:
            requests.append(
                {
                    "path": "/v1/embeddings",
                    "json": {"input": [int(t) for t in rng.integers(0, 150000, 12)], "input_token_ids": True},
                }
            )
        else:
            requests.append(
                {
                    "path": "/v1/rerank",
                    "json": {
                        "query": f"query {i}",
                        "documents": DOCS[: 1 + i % 3],
                        "instruction": "Judge" if i % 2 else None,
                    },
                }
            )
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        responses = await asyncio.gather(*(client.post(r["path"], json=r["json"]) for r in requests))
    return list(zip(requests, responses, strict=True))


def _values(response: httpx.Response) -> np.ndarray:
    body = response.json()
    if "data" in body:
        return _vectors(body)
    return np.array(
        [x["relevance_score"] for x in sorted(body["results"], key=lambda x: x["index"])], dtype=np.float32
    )


@pytest.mark.slow
def test_200_concurrent_mixed_requests_equal_single_requests(server):
    pairs = asyncio.run(_mixed_requests(server.url, 200))
    assert [resp.status_code for _, resp in pairs] == [200] * 200, [
        r.text for _, r in pairs if r.status_code != 200
    ][:3]
    with server.client() as c:  # the same requests again, one at a time
        for request, resp in pairs:
            alone = c.post(request["path"], json=request["json"])
            # Merged batches pad and group differently from a lone request: float32 rounding only.
            np.testing.assert_allclose(_values(resp), _values(alone), rtol=0, atol=1e-6)
            if "usage" in alone.json() and "prompt_tokens" in alone.json()["usage"]:
                assert resp.json()["usage"] == alone.json()["usage"]
