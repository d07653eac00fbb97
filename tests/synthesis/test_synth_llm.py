"""The LLM backends against a real HTTP server on loopback (the fake endpoint) and a tiny local model."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from synth_fake_llm import Drop, FakeLLM, Reply, Status

from embedforge.synthesis.llm import (
    LLMError,
    LLMFatalError,
    LocalBackend,
    OpenAIBackend,
    RetryPolicy,
    make_backend,
)

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)
MSG = [{"role": "user", "content": "hi"}]


def then_ok(*first):
    """A script whose first answers are ``first``, then a valid reply."""

    def script(body, n):
        return first[n] if n < len(first) else Reply('{"Query": "ok"}')

    return script


def complete(backend, **kw):
    async def go():
        try:
            return await backend.complete(MSG, temperature=0.0, max_tokens=16, **kw)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_valid_answer_and_request_body():
    with FakeLLM() as llm:
        llm.script = then_ok()
        backend = OpenAIBackend(llm.url, "my-model", retry=FAST)
        assert complete(backend) == '{"Query": "ok"}'
    assert backend.stats.requests == 1 and backend.stats.retries == 0
    body = llm.bodies[0]
    assert body["model"] == "my-model" and body["messages"] == MSG and body["max_tokens"] == 16


@pytest.mark.parametrize(
    "first,counter",
    [
        ((Status(429, {"Retry-After": "0"}),), "rate_limited"),
        ((Status(503), Status(500)), "server_errors"),
        ((Drop(),), "connection_errors"),
        ((Reply("late", delay=1.5),), "timeouts"),
    ],
)
def test_transient_failures_are_retried(first, counter):
    with FakeLLM(then_ok(*first)) as llm:
        backend = OpenAIBackend(llm.url, "m", retry=FAST, timeout=0.5)
        assert complete(backend) == '{"Query": "ok"}'
    assert getattr(backend.stats, counter) == len(first)
    assert backend.stats.retries == len(first)
    assert llm.calls == len(first) + 1


def test_retries_are_bounded():
    with FakeLLM(lambda body, n: Status(429, {"Retry-After": "0"})) as llm:
        backend = OpenAIBackend(
            llm.url, "m", retry=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.01)
        )
        with pytest.raises(LLMError, match="after 3 attempts; last error: 429"):
            complete(backend)
    assert llm.calls == 3


def test_fatal_and_client_errors_are_not_retried():
    with FakeLLM(lambda body, n: Status(401)) as llm:
        with pytest.raises(LLMFatalError, match="401"):
            complete(OpenAIBackend(llm.url, "m", retry=FAST))
        assert llm.calls == 1
    with FakeLLM(lambda body, n: Status(400)) as llm:
        with pytest.raises(LLMError, match="400") as e:
            complete(OpenAIBackend(llm.url, "m", retry=FAST))
        assert not isinstance(e.value, LLMFatalError) and llm.calls == 1


def test_concurrency_limit_is_respected():
    with FakeLLM(lambda body, n: Reply("{}", delay=0.3)) as llm:
        backend = OpenAIBackend(llm.url, "m", concurrency=3, retry=FAST)

        async def go():
            try:
                return await asyncio.gather(
                    *[backend.complete(MSG, temperature=0, max_tokens=4) for _ in range(9)]
                )
            finally:
                await backend.aclose()

        assert asyncio.run(go()) == ["{}"] * 9
    assert 2 <= llm.peak_in_flight <= 3


def test_backoff_is_full_jitter_and_honours_retry_after():
    policy = RetryPolicy(max_retries=5, base_delay=0.5, max_delay=4.0)
    rng = random.Random(0)
    for attempt in range(6):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        cap = min(4.0, 0.5 * 2**attempt)
        assert all(0 <= d <= cap for d in delays) and max(delays) > cap / 2
    assert policy.delay(0, rng, retry_after=3.0) == 3.0
    assert policy.delay(0, rng, retry_after=60.0) == 4.0  # a server's Retry-After is capped
    with pytest.raises(ValueError, match="retry settings"):
        RetryPolicy(max_retries=-1)


def test_make_backend_rejects_bad_values():
    with pytest.raises(ValueError, match="local:PATH"):
        make_backend("ftp://x", "m")
    with pytest.raises(ValueError, match="--model is required"):
        make_backend("http://127.0.0.1:1/v1", None)
    with pytest.raises(FileNotFoundError, match="model directory '/nonexistent/model' does not exist"):
        make_backend("local:/nonexistent/model")
    with pytest.raises(ValueError, match="concurrency"):
        OpenAIBackend("http://127.0.0.1:1/v1", "m", concurrency=0)


def test_local_backend_refuses_pickle_weights_and_tokenizers_without_chat_template(
    tmp_path, tiny_embedder_plain_dir
):
    import shutil

    from embedforge.loading import CheckpointError

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_embedder_plain_dir / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="only pickle weights"):
        make_backend(f"local:{pickled}")
    plain = tmp_path / "no-template"
    shutil.copytree(tiny_embedder_plain_dir, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in plain.glob("chat_template.*"):
        extra.unlink()
    with pytest.raises(ValueError, match="has no chat template"):
        make_backend(f"local:{plain}")


def test_local_backend_equals_plain_greedy_generation(tiny_embedder_plain_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    backend = make_backend(f"local:{tiny_embedder_plain_dir}")
    assert isinstance(backend, LocalBackend)
    messages = [{"role": "user", "content": 'Return {"Query": "x"} as JSON.'}]
    got = asyncio.run(backend.complete(messages, temperature=0.0, max_tokens=6))

    tok = AutoTokenizer.from_pretrained(tiny_embedder_plain_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_embedder_plain_dir)
    text = tok.apply_chat_template(
        messages, add_generation_prompt=True, enable_thinking=False, tokenize=False
    )
    assert text.startswith("<|im_start|>user\n") and text.endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert got == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert isinstance(json.dumps(got), str) and backend.stats.requests == 1
