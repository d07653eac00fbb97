"""The engine without any web server: queueing, merging, routing back, backpressure, shutdown."""

from __future__ import annotations

import numpy as np
import pytest

from embedforge.engine import BatchStats, EmbedTask, Engine, EngineError, ErrorKind, RerankTask
from embedforge.server.errors import http_status

TEXTS = [f"sample text {i} " + "word " * (i % 9) for i in range(24)]
DOCS = ["The capital of China is Beijing.", "Gravity is a force.", "Paris is in France.", "x " * 40]


@pytest.fixture()
def stats() -> list[BatchStats]:
    return []


@pytest.fixture()
def engine(embedder, reranker, stats):
    eng = Engine(embedder, reranker, max_batch_tokens=4096, max_queue=64, on_batch=stats.append)
    yield eng
    eng.close()


def test_one_request_equals_direct_call_exactly(engine, embedder, reranker):
    out = engine.embed(TEXTS)
    assert np.array_equal(out.embeddings, embedder.encode(TEXTS))
    assert out.tokens == sum(len(x) for x in embedder.tokenize(TEXTS))
    prompt = embedder.query_prompt("Find the text")
    assert np.array_equal(
        engine.embed(TEXTS[:5], prompt=prompt, dim=32).embeddings,
        embedder.encode_queries(TEXTS[:5], instruction="Find the text", dim=32),
    )
    ranked = engine.rerank("what is the capital of China?", DOCS, instruction="Judge it")
    assert np.array_equal(
        ranked.scores, reranker.score("what is the capital of China?", DOCS, instruction="Judge it")
    )


def test_token_ids_are_treated_as_tokenized_text(engine, embedder):
    raw = [embedder.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS[:6]]
    out = engine.embed(raw)
    assert np.array_equal(out.embeddings, embedder.encode(TEXTS[:6]))
    # an end token already present is not doubled
    with_end = [x + [embedder.end_token_id] for x in raw]
    assert np.array_equal(engine.embed(with_end).embeddings, out.embeddings)


def test_concurrent_requests_are_merged_and_routed_back(engine, embedder, stats):
    singles = [engine.embed([t]).embeddings for t in TEXTS]  # one request per batch
    stats.clear()
    with engine.hold():  # every request waits in the queue, then the worker takes them in one go
        futures = [engine.submit_embed(EmbedTask(texts=[t])) for t in TEXTS]
    results = [f.result(timeout=60).embeddings for f in futures]
    assert sum(s.requests for s in stats) == len(TEXTS)
    assert max(s.requests for s in stats) > 1  # merged
    for got, want in zip(results, singles, strict=True):
        # a merged batch pads and groups differently: equal to float32 rounding, not bit for bit
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    merged_direct = embedder.encode_ids(embedder.tokenize(TEXTS))
    assert np.array_equal(np.concatenate(results), merged_direct)  # the merged batch IS the direct call


def test_mixed_dimensions_in_one_batch_are_exact(engine, embedder):
    with engine.hold():
        f64 = engine.submit_embed(EmbedTask(texts=TEXTS[:4]))
        f32 = engine.submit_embed(EmbedTask(texts=TEXTS[4:8], dim=32))
        f48 = engine.submit_embed(EmbedTask(texts=TEXTS[8:12], dim=48))
    assert f64.result().embeddings.shape == (4, 64)
    assert np.array_equal(f32.result().embeddings, embedder.encode(TEXTS[4:8], dim=32))
    assert np.array_equal(f48.result().embeddings, embedder.encode(TEXTS[8:12], dim=48))


def test_rerank_requests_merge_and_match(engine, reranker, stats):
    queries = ["capital of China", "what is gravity", "capital of France"]
    want = [reranker.score(q, DOCS) for q in queries]
    stats.clear()
    with engine.hold():
        futures = [engine.submit_rerank(RerankTask(q, DOCS)) for q in queries]
    for f, w in zip(futures, want, strict=True):
        np.testing.assert_allclose(f.result().scores, w, rtol=0, atol=1e-6)
    assert [s.requests for s in stats if s.queue == "reranker"] == [3]


def test_batch_of_one_mode_never_merges(embedder):
    stats: list[BatchStats] = []
    with Engine(embedder, dynamic_batching=False, on_batch=stats.append) as eng:
        with eng.hold():
            futures = [eng.submit_embed(EmbedTask(texts=[t])) for t in TEXTS[:6]]
        results = [f.result() for f in futures]
    assert [s.requests for s in stats] == [1] * 6
    assert np.array_equal(
        np.concatenate([r.embeddings for r in results]),
        np.concatenate([embedder.encode([t]) for t in TEXTS[:6]]),
    )


def test_token_budget_splits_batches(embedder):
    stats: list[BatchStats] = []
    budget = 64
    with Engine(embedder, max_batch_tokens=budget, on_batch=stats.append) as eng:
        with eng.hold():
            futures = [eng.submit_embed(EmbedTask(texts=[t])) for t in TEXTS]
        [f.result() for f in futures]
    assert sum(s.requests for s in stats) == len(TEXTS)
    assert len(stats) > 1
    assert all(s.tokens <= budget or s.requests == 1 for s in stats)


def test_full_queue_raises_queue_full_with_retry_after(embedder):
    with Engine(embedder, max_queue=2, retry_after_s=3) as eng:
        with eng.hold():
            first = [eng.submit_embed(EmbedTask(texts=["a"])), eng.submit_embed(EmbedTask(texts=["b"]))]
            with pytest.raises(EngineError) as err:
                eng.submit_embed(EmbedTask(texts=["c"]))
        assert (
            err.value.kind is ErrorKind.QUEUE_FULL
            and http_status(err.value) == 429
            and err.value.retry_after == 3
        )
        assert all(f.result().embeddings.shape == (1, 64) for f in first)


def test_a_bad_request_fails_alone(engine, embedder):
    long_text = "word " * (embedder.max_length + 10)
    with engine.hold():
        good = engine.submit_embed(EmbedTask(texts=["fine"]))
        bad = engine.submit_embed(EmbedTask(texts=[long_text], truncate=False))
        cut = engine.submit_embed(EmbedTask(texts=[long_text]))  # truncated by default
    assert np.array_equal(good.result().embeddings, embedder.encode(["fine"]))
    with pytest.raises(EngineError) as err:
        bad.result()
    assert err.value.kind is ErrorKind.INVALID_INPUT and "input[0]" in err.value.message
    assert str(embedder.max_length) in err.value.message
    assert cut.result().tokens == embedder.max_length


def test_submit_checks_dimensions_and_token_ids(engine):
    with pytest.raises(EngineError, match="between 32 and 64") as err:
        engine.submit_embed(EmbedTask(texts=["a"], dim=65))
    assert err.value.param == "dimensions" and http_status(err.value) == 400
    with pytest.raises(EngineError, match="token id 999999999") as err:
        engine.submit_embed(EmbedTask(ids=[[1, 2, 999999999]]))
    assert http_status(err.value) == 400


def test_close_finishes_queued_requests_and_refuses_new_ones(embedder):
    eng = Engine(embedder)
    with eng.hold():
        futures = [eng.submit_embed(EmbedTask(texts=[t])) for t in TEXTS[:8]]
    eng.close()
    assert all(f.done() and f.result().embeddings.shape == (1, 64) for f in futures)
    with pytest.raises(EngineError) as err:
        eng.submit_embed(EmbedTask(texts=["late"]))
    assert err.value.kind is ErrorKind.SHUTTING_DOWN and http_status(err.value) == 503


def test_cancelled_requests_are_skipped(embedder):
    stats: list[BatchStats] = []
    with Engine(embedder, on_batch=stats.append) as eng:
        with eng.hold():
            keep = eng.submit_embed(EmbedTask(texts=["keep"]))
            drop = eng.submit_embed(EmbedTask(texts=["drop"]))
            assert drop.cancel()
        assert keep.result().embeddings.shape == (1, 64)
    assert sum(s.requests for s in stats) == 1


def test_batch_wait_collects_requests_arriving_later(embedder):
    stats: list[BatchStats] = []
    # The first request waits up to 10 s for company; the budget closes the batch as soon as the
    # second one arrives (their tokens fill it), so the test never waits for the timer.
    first_tokens = len(embedder.tokenize(["first"])[0])
    second_tokens = len(embedder.tokenize(["second"])[0])
    with Engine(
        embedder, batch_wait_ms=10_000, max_batch_tokens=first_tokens + second_tokens, on_batch=stats.append
    ) as eng:
        first = eng.submit_embed(EmbedTask(texts=["first"]))
        second = eng.submit_embed(EmbedTask(texts=["second"]))
        results = [first.result(timeout=60), second.result(timeout=60)]
    assert [s.requests for s in stats] == [2]
    assert np.array_equal(
        np.concatenate([r.embeddings for r in results]), embedder.encode(["first", "second"])
    )
