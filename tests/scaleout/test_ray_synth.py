"""The synthesis fan-out on Ray Core: two real HTTP endpoints (the fake LLM), one store on the driver."""

from __future__ import annotations

import threading

import pytest
from synth_fake_llm import FakeLLM, Status, smart_reply
from synth_testdata import DOCS

from embedforge.synthesis.config import SynthesisConfig
from embedforge.synthesis.llm import OpenAIBackend, RetryPolicy
from embedforge.synthesis.pipeline import synthesize
from embedforge.synthesis.sources import Document
from embedforge.synthesis.store import RecordKey, iter_jsonl

pytestmark = pytest.mark.slow
FAST = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02)
CORPUS = [Document(i, t) for i, t in DOCS]


def _by_key(path) -> dict[RecordKey, dict]:
    rows = list(iter_jsonl(path))
    keys = [RecordKey.from_provenance(r["provenance"]) for r in rows]
    assert len(keys) == len(set(keys)), "a key is stored twice"
    return dict(zip(keys, rows, strict=True))


def _fail_first(n: int):
    """An endpoint whose first ``n`` answers are a 400 (the record fails; no retry can fix it)."""
    lock, seen = threading.Lock(), [0]

    def script(body: dict, i: int):
        with lock:
            seen[0] += 1
            if seen[0] <= n:
                return Status(400)
        return smart_reply(body, i)

    return script


@pytest.mark.parametrize("task", ["sts", "classification"])
def test_fanout_over_two_endpoints_matches_one_endpoint_and_a_rerun_skips_finished_keys(
    ray_local, tmp_path, task
):
    from embedforge.scaleout.synth import RayFanoutBackend

    cfg = SynthesisConfig(per_doc=3, seed=5)
    ref_out, out = tmp_path / "ref.jsonl", tmp_path / "ray.jsonl"
    with FakeLLM() as single, FakeLLM(_fail_first(2)) as a, FakeLLM() as b:
        ref = synthesize(
            task,
            CORPUS,
            OpenAIBackend(single.url, "fake-llm", concurrency=4, retry=FAST, timeout=5),
            ref_out,
            cfg,
            show_progress=False,
        )
        assert ref.failed == 0
        fan = RayFanoutBackend([a.url, b.url], "fake-llm", concurrency=2, retry=FAST, timeout=5)
        try:
            first = synthesize(task, CORPUS, fan, out, cfg, show_progress=False)
        finally:
            fan.shutdown()
        assert first.failed == 2 and first.done == first.total - 2
        # both endpoints were asked: a's first two answers are the failures, the workers start at once
        assert a.calls >= 2 and b.calls > 0
        assert a.peak_in_flight <= 2 and b.peak_in_flight <= 2  # bounded per endpoint
        assert first.requests == a.calls + b.calls  # the actors' counters reach the report
        assert set(fan.endpoint_stats) == {a.url, b.url}

        calls = a.calls + b.calls
        again = RayFanoutBackend([a.url, b.url], "fake-llm", concurrency=2, retry=FAST, timeout=5)
        try:
            second = synthesize(task, CORPUS, again, out, cfg, show_progress=False)
        finally:
            again.shutdown()
        assert second.skipped == first.total - 2 and second.retried == 2
        assert second.done == 2 and second.failed == 0
        assert a.calls + b.calls - calls == second.requests  # only the two failed keys were asked again
    got, want = _by_key(out), _by_key(ref_out)
    assert got == want  # the same records, key by key, as one endpoint in one process


def test_endpoint_list_is_checked(ray_local):
    from embedforge.scaleout.synth import RayFanoutBackend

    with pytest.raises(ValueError, match="at least one endpoint"):
        RayFanoutBackend([" "], "m")
    with pytest.raises(ValueError, match="must start with http"):
        RayFanoutBackend(["localhost:8000/v1"], "m")
    with pytest.raises(ValueError, match="repeat"):
        RayFanoutBackend(["http://a/v1", "http://a/v1"], "m")


def test_synth_command_with_engine_ray_spreads_over_the_listed_endpoints(ray_local, tmp_path):
    import json

    from embedforge.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in DOCS), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    with FakeLLM() as a, FakeLLM() as b:
        argv = ["synth", "sts", "--corpus", str(corpus), "--llm", f"{a.url},{b.url}", "--model", "fake-llm"]
        argv += [
            "--out",
            str(out),
            "--per-doc",
            "2",
            "--concurrency",
            "2",
            "--engine",
            "ray",
            "--no-progress",
        ]
        assert main(argv) == 0
        assert a.calls > 0 and b.calls > 0
        assert a.peak_in_flight <= 2 and b.peak_in_flight <= 2
        assert len(_by_key(out)) == 2 * len(DOCS)
        calls = a.calls + b.calls
        assert main(argv) == 0  # every key is finished: nothing is asked again
        assert a.calls + b.calls == calls
