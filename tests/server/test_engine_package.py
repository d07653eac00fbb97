"""``embedforge.engine`` on its own: no web stack imported, abandoned work dropped (counted), the
library's rules for prompts, ranking and text validity."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from embedforge.engine import EmbedTask, Engine, EngineError, ErrorKind, RerankTask, StepStats
from embedforge.reranker import rank_order

DOCS = ["The capital of China is Beijing.", "Gravity is a force.", "Paris is in France.", "x " * 40]


def test_importing_the_engine_imports_no_web_stack():
    code = (
        "import json, sys, embedforge.engine\n"
        "web = ['fastapi', 'starlette', 'prometheus_client', 'pydantic_settings', 'uvicorn']\n"
        "print(json.dumps([m for m in sys.modules if m.split('.')[0] in web]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
    # and the check can fail: the server package does pull them in
    out = subprocess.run(
        [sys.executable, "-c", code.replace("embedforge.engine", "embedforge.server")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "fastapi" in json.loads(out.stdout)


def test_queued_requests_of_callers_that_left_are_skipped(embedder):
    with Engine(embedder) as eng:
        with eng.hold():
            keep = eng.submit_embed(EmbedTask(texts=["keep"]))
            gone = [eng.submit_embed(EmbedTask(texts=[f"gone {i}"])) for i in range(3)]
            assert all(f.cancel() for f in gone)
        assert keep.result(timeout=60).embeddings.shape == (1, 64)
        stats = eng.stats()["embedder"]
    assert (stats.submitted, stats.completed, stats.cancelled, stats.skipped_queued) == (4, 1, 3, 3)
    assert stats.steps_run == 1 and stats.stopped_running == 0


def test_cancelled_requests_free_their_queue_slots(embedder):
    with Engine(embedder, max_queue=2) as eng:
        with eng.hold():
            gone = [eng.submit_embed(EmbedTask(texts=[t])) for t in ("a", "b")]
            with pytest.raises(EngineError) as err:
                eng.submit_embed(EmbedTask(texts=["c"]))
            assert err.value.kind is ErrorKind.QUEUE_FULL
            assert all(f.cancel() for f in gone)
            late = eng.submit_embed(EmbedTask(texts=["c"]))  # the abandoned ones made room
        assert late.result(timeout=60).embeddings.shape == (1, 64)


@pytest.mark.parametrize("kind", ["rerank", "embed"])
def test_running_work_stops_at_the_next_step_when_its_caller_leaves(embedder, reranker, kind):
    first_step = threading.Event()
    release = threading.Event()

    def pause_after_first_step(step: StepStats) -> None:
        if step.done == 1:
            first_step.set()
            assert release.wait(60)

    # a small budget: one or two inputs per model call, so 20 to 40 calls
    with Engine(embedder, reranker, max_batch_tokens=32, on_step=pause_after_first_step) as eng:
        if kind == "rerank":
            future = eng.submit_rerank(
                RerankTask("which is the capital?", [f"document {i} " * 5 for i in range(40)])
            )
            queue = "reranker"
        else:
            future = eng.submit_embed(EmbedTask(texts=[f"text {i} " * 5 for i in range(40)]))
            queue = "embedder"
        assert first_step.wait(60)
        assert future.cancel()  # the caller leaves while its request runs
        release.set()
        later = eng.submit_embed(EmbedTask(texts=["after"]))  # the worker is free again
        assert later.result(timeout=60).embeddings.shape == (1, 64)
        stats = eng.stats()[queue]
    assert stats.cancelled == 1 and stats.stopped_running == 1 and stats.completed == int(kind == "embed")
    runs = stats.steps_run - int(kind == "embed")  # minus the later request's one step
    assert runs == 1 and stats.steps_skipped > 10  # stopped after the step that was running


def test_big_requests_run_in_steps_and_stay_exact(embedder, reranker):
    texts = [f"text {i} " + "word " * (i % 13) for i in range(50)]
    query = "what is the capital of China?"
    docs = [f"document {i}: " + "word " * (i % 11) for i in range(30)]
    steps: list[StepStats] = []
    with Engine(embedder, reranker, max_batch_tokens=128, on_step=steps.append) as eng:
        emb = eng.embed(texts, dim=48)
        ranked = eng.rerank(query, docs, top_n=5)
    assert max(s.total for s in steps) > 3  # really split into several model calls
    assert np.array_equal(emb.embeddings, embedder.encode(texts, dim=48, batch_tokens=128))
    want = reranker.score(query, docs, batch_tokens=128)
    np.testing.assert_allclose(ranked.scores, want, rtol=0, atol=1e-6)
    assert ranked.order == rank_order(ranked.scores, 5) and len(ranked.order) == 5


def test_rerank_order_is_best_first_with_ties_in_input_order(engine_pair):
    eng, reranker = engine_pair
    docs = DOCS + [DOCS[1]]  # a tie: documents 1 and 4 score the same
    out = eng.rerank("what is gravity?", docs)
    scores = reranker.score("what is gravity?", docs)
    assert out.order == sorted(range(len(docs)), key=lambda i: (-float(scores[i]), i))
    assert out.order.index(1) < out.order.index(4)
    assert eng.rerank("what is gravity?", docs, top_n=2).order == out.order[:2]
    with pytest.raises(EngineError, match="top_n") as err:
        eng.rerank("q", docs, top_n=0)
    assert err.value.kind is ErrorKind.VALIDATION


def test_the_side_decides_the_prompt(engine_pair, embedder):
    eng, _ = engine_pair
    texts = ["What is the capital of China?", "Explain gravity"]
    assert np.array_equal(eng.embed(texts, side="query").embeddings, embedder.encode_queries(texts))
    assert np.array_equal(eng.embed(texts, side="document").embeddings, embedder.encode_documents(texts))
    assert np.array_equal(
        eng.embed(texts, side="document", instruction="Find code").embeddings,
        embedder.encode(texts, prompt=embedder.query_prompt("Find code")),
    )
    assert np.array_equal(eng.embed(texts).embeddings, embedder.encode(texts))


def test_text_that_is_not_valid_unicode_is_refused_naming_field_and_index(engine_pair):
    eng, _ = engine_pair
    cases = [
        (lambda: eng.submit_embed(EmbedTask(texts=["ok", "a\ud800b"])), "input", "input[1]"),
        (
            lambda: eng.submit_embed(EmbedTask(texts=["ok"], instruction="\udfff")),
            "instruction",
            "instruction",
        ),
        (lambda: eng.submit_rerank(RerankTask("q\ud800", ["d"])), "query", "query"),
        (lambda: eng.submit_rerank(RerankTask("q", ["d", "e", "\ud800"])), "documents", "documents[2]"),
    ]
    for submit, param, where in cases:
        with pytest.raises(EngineError) as err:
            submit()
        assert err.value.kind is ErrorKind.VALIDATION and err.value.param == param
        assert err.value.message.startswith(where) and "surrogate" in err.value.message


@pytest.fixture()
def engine_pair(embedder, reranker):
    with Engine(embedder, reranker) as eng:
        yield eng, reranker
