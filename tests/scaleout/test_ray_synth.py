"""The synthesis fan-out on Ray Core: two real HTTP endpoints (the fake LLM), one store on the driver."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
from synth_fake_llm import FakeLLM, Reply, Status, constrained_reply, smart_reply
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


def test_fanout_sends_each_answers_schema_when_a_response_format_is_set(ray_local, tmp_path):
    from embedforge.scaleout.synth import RayFanoutBackend

    cfg = SynthesisConfig(per_doc=2, seed=3)
    # endpoints that chatter unless decoding is constrained: only a schema gives valid records
    with (
        FakeLLM(constrained_reply) as single,
        FakeLLM(constrained_reply) as a,
        FakeLLM(constrained_reply) as b,
    ):
        one = OpenAIBackend(single.url, "fake-llm", retry=FAST, timeout=5, response_format="json_object")
        ref = synthesize("sts", CORPUS, one, tmp_path / "ref.jsonl", cfg, show_progress=False)
        fan = RayFanoutBackend(
            [a.url, b.url], "fake-llm", concurrency=2, retry=FAST, timeout=5, response_format="json_object"
        )
        try:
            got = synthesize("sts", CORPUS, fan, tmp_path / "ray.jsonl", cfg, show_progress=False)
        finally:
            fan.shutdown()
        formats = a.response_formats + b.response_formats
        assert a.calls > 0 and b.calls > 0
        assert formats and all(rf is not None and rf["type"] == "json_object" for rf in formats)
        assert a.schema_violations == b.schema_violations == []
    assert ref.failed == got.failed == 0 and got.invalid_answers == 0
    assert _by_key(tmp_path / "ray.jsonl") == _by_key(tmp_path / "ref.jsonl")


def test_an_endpoint_actor_killed_with_sigkill_is_restarted_and_every_key_is_stored_once(ray_local, tmp_path):
    from embedforge.scaleout.synth import RayFanoutBackend

    cfg = SynthesisConfig(per_doc=3, seed=5)
    target: list[int] = []  # the pid of endpoint a's actor, known once the actors are up
    killed: list[int] = []

    def kill_on_third_call(body: dict, n: int):
        if n == 2 and target:  # mid-run: the actor dies holding this request and the others in flight
            os.kill(target[0], signal.SIGKILL)
            killed.append(target[0])
        return Reply(smart_reply(body, n).content, delay=0.05)  # type: ignore[union-attr]

    with FakeLLM() as single, FakeLLM(kill_on_third_call) as a, FakeLLM() as b:
        ref = synthesize(
            "sts",
            CORPUS,
            OpenAIBackend(single.url, "fake-llm", concurrency=4, retry=FAST, timeout=5),
            tmp_path / "ref.jsonl",
            cfg,
            show_progress=False,
        )
        fan = RayFanoutBackend([a.url, b.url], "fake-llm", concurrency=2, retry=FAST, timeout=5)
        try:
            target.append(fan.worker_pids()[a.url])
            got = synthesize("sts", CORPUS, fan, tmp_path / "ray.jsonl", cfg, show_progress=False)
            summary = fan.summary()
            assert fan.worker_pids()[a.url] != killed[0]  # a new process serves endpoint a
        finally:
            fan.shutdown()
    assert killed
    assert got.failed == 0 and got.done == got.total == ref.total
    assert summary["actor_restarts"] == 1 and summary["endpoints"][a.url]["restarted"] is True
    assert summary["endpoints"][b.url]["restarted"] is False
    json.dumps(summary)  # the CLI prints it as JSON
    assert _by_key(tmp_path / "ray.jsonl") == _by_key(tmp_path / "ref.jsonl")  # each key once, same records


def test_endpoint_list_is_checked(ray_local):
    from embedforge.scaleout.synth import RayFanoutBackend

    with pytest.raises(ValueError, match="at least one endpoint"):
        RayFanoutBackend([" "], "m")
    with pytest.raises(ValueError, match="must start with http"):
        RayFanoutBackend(["localhost:8000/v1"], "m")
    with pytest.raises(ValueError, match="repeat"):
        RayFanoutBackend(["http://a/v1", "http://a/v1"], "m")


def test_synth_command_with_engine_ray_spreads_over_the_listed_endpoints(ray_local, tmp_path):
    from embedforge.cli import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in DOCS), encoding="utf-8")
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"
    with FakeLLM(constrained_reply) as a, FakeLLM(constrained_reply) as b:
        argv = ["synth", "sts", "--corpus", str(corpus), "--llm", f"{a.url},{b.url}", "--model", "fake-llm"]
        argv += ["--out", str(out), "--per-doc", "2", "--concurrency", "2", "--engine", "ray"]
        argv += ["--response-format", "json_schema", "--report", str(report), "--no-progress"]
        assert main(argv) == 0
        assert a.calls > 0 and b.calls > 0
        assert a.peak_in_flight <= 2 and b.peak_in_flight <= 2
        assert {rf["type"] for rf in a.response_formats + b.response_formats} == {"json_schema"}
        assert len(_by_key(out)) == 2 * len(DOCS)
        engine = json.loads(report.read_text(encoding="utf-8"))["engine"]
        assert set(engine["endpoints"]) == {a.url, b.url} and engine["actor_restarts"] == 0
        assert engine["endpoints"][a.url]["requests"] == a.calls
        assert engine["endpoints"][b.url]["requests"] == b.calls
        calls = a.calls + b.calls
        assert main(argv) == 0  # every key is finished: nothing is asked again
        assert a.calls + b.calls == calls
