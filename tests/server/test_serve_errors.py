"""Every row of the error table over real HTTP, auth on every inference route, readiness."""

from __future__ import annotations

import time

import pytest

from embedforge.server import ServerSettings, create_app
from embedforge.server.errors import ERROR_TABLE, ErrorKind

EMBEDDER_ID = "tiny-embedder"
RERANKER_ID = "tiny-reranker"
INFERENCE_ROUTES = [
    ("POST", "/v1/embeddings", {"input": "hello"}),
    ("POST", "/v1/rerank", {"query": "q", "documents": ["d"]}),
    ("POST", "/rerank", {"query": "q", "documents": ["d"]}),
    ("GET", "/v1/models", None),
]


def assert_error(
    response, status: int, code: str, *, param: str | None = "ignore", contains: str = ""
) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["type"] == ERROR_TABLE[ErrorKind(code)].type
    if param != "ignore":
        assert error["param"] == param
    assert contains in error["message"]
    assert "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": ["a", 3]}, "input"),
        ({"input": [[1, 2], []]}, "input"),
        ({"input": [-1]}, "input"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "a", "input_type": "passage"}, "input_type"),
        ({"input": "a", "unknown_field": 1}, "unknown_field"),
    ],
)
def test_422_schema_errors_on_embeddings(server, body, param):
    with server.client() as c:
        error = assert_error(c.post("/v1/embeddings", json=body), 422, "validation_error")
    assert error["param"].startswith(param)


@pytest.mark.parametrize(
    "body",
    [
        {"documents": ["d"]},
        {"query": "q", "documents": []},
        {"query": "q", "documents": [{"txt": "d"}]},
        {"query": "q", "documents": ["d"], "top_n": 0},
    ],
)
def test_422_schema_errors_on_rerank(server, body):
    with server.client() as c:
        assert_error(c.post("/v1/rerank", json=body), 422, "validation_error")


def test_422_on_a_body_that_is_not_json(server):
    with server.client() as c:
        r = c.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 422, "validation_error")


def test_413_body_and_input_count(make_server):
    with make_server(max_body_bytes=2000, max_request_inputs=3) as srv, srv.client() as c:
        assert_error(
            c.post("/v1/embeddings", json={"input": "x" * 5000}), 413, "request_too_large", contains="2000"
        )
        chunked = c.post(
            "/v1/embeddings",
            content=iter([b'{"input": "', b"x" * 3000, b'"}']),
            headers={"content-type": "application/json"},
        )
        assert_error(chunked, 413, "request_too_large")
        assert_error(
            c.post("/v1/embeddings", json={"input": ["a", "b", "c", "d"]}),
            413,
            "request_too_large",
            param="input",
            contains="4 items",
        )
        assert_error(c.post("/v1/embeddings", json={"input": [[1], [2], [3], [4]]}), 413, "request_too_large")
        assert_error(
            c.post("/v1/rerank", json={"query": "q", "documents": ["1", "2", "3", "4"]}),
            413,
            "request_too_large",
            param="documents",
        )
        assert c.post("/v1/embeddings", json={"input": ["a", "b", "c"]}).status_code == 200


def test_400_inputs_over_the_model_length_without_truncation(server, embedder, reranker):
    long_text = "word " * (embedder.max_length + 5)
    with server.client() as c:
        assert_error(
            c.post("/v1/embeddings", json={"input": ["short", long_text], "truncate": False}),
            400,
            "invalid_input",
            param="input",
            contains="input[1]",
        )
        ids = [11] * (embedder.max_length + 5)
        assert_error(
            c.post("/v1/embeddings", json={"input": ids, "truncate": False, "input_token_ids": True}),
            400,
            "invalid_input",
            contains=str(embedder.max_length),
        )
        # by default they are truncated, exactly as the library does
        ok = c.post("/v1/embeddings", json={"input": long_text}).json()
        assert ok["usage"]["prompt_tokens"] == embedder.max_length
        assert_error(
            c.post("/v1/rerank", json={"query": "q", "documents": ["d", "word " * 9000], "truncate": False}),
            400,
            "invalid_input",
            param="documents",
            contains="documents[1]",
        )
        assert c.post("/v1/rerank", json={"query": "q", "documents": ["word " * 9000]}).status_code == 200


def test_400_bad_token_ids_and_dimensions(server):
    with server.client() as c:
        assert_error(
            c.post("/v1/embeddings", json={"input": [1, 2, 10**9], "input_token_ids": True}),
            400,
            "invalid_input",
            param="input",
            contains="1000000000",
        )
        assert_error(
            c.post("/v1/embeddings", json={"input": "a", "dimensions": 65}),
            400,
            "invalid_input",
            param="dimensions",
            contains="between 32 and 64",
        )


def test_404_unknown_model_wrong_task_and_route(server):
    with server.client() as c:
        assert_error(
            c.post("/v1/embeddings", json={"model": "nope", "input": "a"}),
            404,
            "model_not_found",
            param="model",
            contains=EMBEDDER_ID,
        )
        assert_error(
            c.post("/v1/embeddings", json={"model": RERANKER_ID, "input": "a"}),
            404,
            "model_not_found",
            contains="is a rerank model",
        )
        assert_error(
            c.post("/v1/rerank", json={"model": EMBEDDER_ID, "query": "q", "documents": ["d"]}),
            404,
            "model_not_found",
        )
        assert_error(c.get("/v1/nothing"), 404, "not_found")
        assert_error(c.get("/v1/embeddings"), 405, "method_not_allowed")


def test_429_with_retry_after_when_the_queue_is_full(make_server):
    with make_server(max_queue=1, retry_after_s=7) as srv, srv.client() as c, srv.client() as c2:
        engine = srv.app.state.server.engine
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            with engine.hold():  # the worker takes nothing: the first request waits in the queue
                waiting = pool.submit(c.post, "/v1/embeddings", json={"input": "first"})
                while engine.queue_depths()["embedder"] < 1:
                    assert not waiting.done(), waiting.result().text
                    time.sleep(0.01)
                r = c2.post("/v1/embeddings", json={"input": "second"})
                assert_error(r, 429, "queue_full", contains="queue is full")
                assert r.headers["retry-after"] == "7"
            assert waiting.result().status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), INFERENCE_ROUTES)
def test_401_on_every_inference_route(make_server, method, path, body):
    with make_server(api_key="s3cret") as srv, srv.client() as c:
        missing = c.request(method, path, json=body)
        assert_error(missing, 401, "invalid_api_key", contains="missing")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = c.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
        assert_error(wrong, 401, "invalid_api_key", contains="invalid")
        assert_error(
            c.request(method, path, json=body, headers={"Authorization": "Basic s3cret"}),
            401,
            "invalid_api_key",
        )
        # auth is checked before the body: a bad body without a key is still a 401
        if body is not None:
            assert c.request(method, path, json={"bad": 1}).status_code == 401
        ok = c.request(method, path, json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200, ok.text
        assert c.get("/health").status_code == 200  # public
        assert c.get("/metrics").status_code == 200  # public


def test_openai_client_with_api_key(make_server):
    import openai

    with make_server(api_key="s3cret") as srv:
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert len(good.embeddings.create(model=EMBEDDER_ID, input=["a", "b"]).data) == 2
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(model=EMBEDDER_ID, input="a")


def test_503_until_the_models_are_loaded(serve_app, tiny_embedder_dir, tmp_path):
    failures: list[BaseException] = []
    broken = ServerSettings(embedder=str(tmp_path / "missing-model"))
    with serve_app(create_app(broken, on_load_error=failures.append)) as srv, srv.client() as c:
        while not failures:
            assert c.get("/health").status_code == 503
            time.sleep(0.01)
        assert_error(c.get("/health"), 503, "model_not_ready", contains="failed to load")
        assert_error(c.post("/v1/embeddings", json={"input": "a"}), 503, "model_not_ready")
    assert "missing-model" in str(failures[0])

    settings = ServerSettings(embedder=str(tiny_embedder_dir), embedder_name="bg")
    with serve_app(create_app(settings)) as srv, srv.client() as c:
        statuses = []
        while (r := c.get("/health")).status_code != 200:
            statuses.append(assert_error(r, 503, "model_not_ready", contains="loading")["code"])
        assert r.json() == {"status": "ok", "models": ["bg"]}
        assert c.post("/v1/embeddings", json={"model": "bg", "input": "a"}).status_code == 200


def test_500_never_shows_internals(serve_app, tiny_embedder_dir, embedder):
    app = create_app(ServerSettings(embedder=str(tiny_embedder_dir)), embedder=embedder)

    @app.get("/boom")  # a route with a bug, to exercise the last row of the table
    def boom() -> None:
        raise RuntimeError("secret internals at /home/user/model.py line 12")

    with serve_app(app) as srv, srv.client() as c:
        r = c.get("/boom")
    error = assert_error(r, 500, "internal_error")
    assert error["message"] == "internal server error" and "secret" not in r.text
