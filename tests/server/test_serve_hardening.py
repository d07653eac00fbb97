"""Hardening over real HTTP: abandoned requests are dropped, the API key comes before the body,
shutdown answers 503, invalid Unicode is a 422, and an internal error keeps the connection."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from rawhttp import raw_request, read_response

from embedforge.engine import StepStats
from embedforge.server import ServerSettings, create_app

RERANK = "/v1/rerank"


def _connect(srv) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _big_rerank() -> bytes:
    docs = [f"document number {i} about the capital of somewhere " * 3 for i in range(400)]
    return json.dumps({"query": "what is the capital of China?", "documents": docs}).encode()


def test_a_queued_request_whose_client_left_is_never_computed(make_server):
    with make_server() as srv:
        engine = srv.app.state.server.engine
        with engine.hold():  # the request waits in the queue
            sock = _connect(srv)
            sock.sendall(raw_request("POST", RERANK, _big_rerank()))
            _wait_for(lambda: engine.queue_depths()["reranker"] == 1, "the request to be queued")
            sock.close()  # the client leaves
            _wait_for(lambda: engine.stats()["reranker"].cancelled == 1, "the server to cancel it")
        _wait_for(lambda: engine.stats()["reranker"].skipped_queued == 1, "the worker to skip it")
        stats = engine.stats()["reranker"]
        assert stats.steps_run == 0 and stats.completed == 0
        with srv.client() as c:  # the reranker is free for the next client
            r = c.post(RERANK, json={"query": "q", "documents": ["a", "b"]})
            assert r.status_code == 200, r.text
            metrics = c.get("/metrics").text
    assert 'embedforge_engine_requests_total{model="reranker",outcome="skipped_queued"} 1.0' in metrics
    assert 'embedforge_requests_total{method="POST",route="/v1/rerank",status="499"}' in metrics


def test_a_running_rerank_whose_client_left_stops_at_the_next_batch(make_server):
    first_step, release = threading.Event(), threading.Event()

    def pause_after_first_step(step: StepStats) -> None:
        if step.queue == "reranker" and step.done == 1 and not release.is_set():
            first_step.set()
            release.wait(60)

    with make_server(max_batch_tokens=256) as srv:
        engine = srv.app.state.server.engine
        engine.add_observer(on_step=pause_after_first_step)
        sock = _connect(srv)
        sock.sendall(raw_request("POST", RERANK, _big_rerank()))
        assert first_step.wait(60)  # the rerank is running: one of its many batches is done
        sock.close()
        _wait_for(lambda: engine.stats()["reranker"].cancelled == 1, "the server to cancel it")
        release.set()
        _wait_for(lambda: engine.stats()["reranker"].stopped_running == 1, "the worker to stop")
        stats = engine.stats()["reranker"]
        assert stats.steps_run == 1 and stats.steps_skipped > 50 and stats.completed == 0
        with srv.client() as c:
            assert c.post(RERANK, json={"query": "q", "documents": ["a"]}).status_code == 200
            metrics = c.get("/metrics").text
    assert 'embedforge_engine_requests_total{model="reranker",outcome="stopped_running"} 1.0' in metrics
    assert 'embedforge_engine_steps_total{model="reranker",outcome="skipped"}' in metrics


def test_requests_still_running_at_the_shutdown_timeout_get_503(make_server):
    with make_server(graceful_timeout_s=1) as srv, srv.client() as c:
        engine = srv.app.state.server.engine
        with engine.hold(), ThreadPoolExecutor(1) as pool:  # the request never gets computed
            waiting = pool.submit(c.post, "/v1/embeddings", json={"input": "late"})
            _wait_for(lambda: engine.queue_depths()["embedder"] == 1, "the request to be queued")
            srv.server.should_exit = True  # graceful shutdown: 1 s for in-flight requests, then cancel
            r = waiting.result(timeout=60)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "shutting_down" and r.headers["retry-after"] == "1"
    assert engine.stats()["embedder"].cancelled == 1


def test_the_api_key_is_checked_before_the_body(make_server):
    with make_server(api_key="s3cret") as srv:
        with srv.client() as c:
            r = c.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            ok = c.post("/v1/embeddings", content=b"{not json", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 422  # with the key, the body is read and found wanting
            for public in ("/health", "/metrics", "/openapi.json"):
                assert c.get(public).status_code == 200, public
            assert c.post("/v2/nothing", content=b"{").status_code == 401  # unknown paths are not public
        # A 14 MB body that is never sent: the 401 comes from the headers alone. Had the server
        # waited for the body, this read would time out.
        sock = _connect(srv)
        try:
            head = raw_request("POST", "/v1/embeddings", headers={"Content-Length": str(14 * 2**20)})
            sock.sendall(head + b'{"input": "')
            status, headers, body = read_response(sock)
        finally:
            sock.close()
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        assert headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("path", "body", "param", "where"),
    [
        ("/v1/embeddings", '{"input": ["fine", "a\\ud800b"]}', "input", "input[1]"),
        ("/v1/embeddings", '{"input": "\\udc00"}', "input", "input[0]"),
        ("/v1/embeddings", '{"input": "x", "instruction": "\\ud800"}', "instruction", "instruction"),
        ("/v1/rerank", '{"query": "q\\ud800", "documents": ["d"]}', "query", "query"),
        ("/v1/rerank", '{"query": "q", "documents": ["d", "e", "\\udfff"]}', "documents", "documents[2]"),
        (
            "/rerank",
            '{"query": "q", "documents": [{"text": "d"}, {"text": "\\ud800"}]}',
            "documents",
            "documents[1]",
        ),
    ],
)
def test_lone_surrogates_get_422_naming_field_and_index(server, path, body, param, where):
    sock = _connect(server)  # one keep-alive connection: the error must not drop it
    try:
        sock.sendall(raw_request("POST", path, body.encode("ascii")))
        status, _, raw = read_response(sock)
        error = json.loads(raw)["error"]
        assert status == 422 and error["code"] == "validation_error" and error["param"] == param
        assert error["message"].startswith(where) and "surrogate" in error["message"]
        sock.sendall(raw_request("POST", "/v1/embeddings", b'{"input": "fine"}'))
        assert read_response(sock)[0] == 200
    finally:
        sock.close()


def test_an_internal_error_is_a_json_500_on_a_connection_that_stays_usable(
    serve_app, tiny_embedder_dir, embedder
):
    app = create_app(ServerSettings(embedder=str(tiny_embedder_dir)), embedder=embedder)

    @app.get("/v1/boom")  # a route with a bug
    def boom() -> None:
        raise RuntimeError("secret internals at /home/user/model.py line 12")

    with serve_app(app) as srv:
        sock = _connect(srv)
        try:
            for _ in range(2):  # the same connection serves the next request after a 500
                sock.sendall(raw_request("GET", "/v1/boom"))
                status, headers, body = read_response(sock)
                assert status == 500 and headers["content-type"] == "application/json"
                assert json.loads(body)["error"] == {
                    "message": "internal server error",
                    "type": "server_error",
                    "param": None,
                    "code": "internal_error",
                }
                assert b"secret" not in body
            sock.sendall(raw_request("GET", "/health"))
            assert read_response(sock)[0] == 200
        finally:
            sock.close()
        with srv.client() as c:
            assert 'route="/v1/boom",status="500"' in c.get("/metrics").text


def test_every_engine_error_kind_has_one_http_row():
    from embedforge.engine import ErrorKind
    from embedforge.server.errors import ERROR_TABLE

    assert set(ERROR_TABLE) == set(ErrorKind)
