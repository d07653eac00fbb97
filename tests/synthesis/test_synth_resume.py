"""Kill a synthesis run with SIGKILL mid-run: no corrupt line, and a rerun finishes skipping finished keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from synth_fake_llm import FakeLLM, smart_reply
from synth_testdata import PERSONAS

from embedforge.synthesis.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
N_DOCS, PER_DOC = 30, 2
OPEN_REQUESTS = 24  # answered at once; later ones wait until the run has been killed


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path, tiny_embedder_dir, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"_id": f"doc{i}", "text": f"Document {i} explains topic number {i} in plain words."})
            + "\n"
            for i in range(N_DOCS)
        )
    )
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in PERSONAS))
    out = tmp_path / "out.jsonl"
    gate = threading.Event()

    def script(body, n):
        if n >= OPEN_REQUESTS:
            gate.wait(timeout=120)  # the run cannot finish before the test has killed it
        return smart_reply(body, n)

    args = [
        "synth",
        "retrieval",
        "--corpus",
        str(corpus),
        "--personas",
        str(personas),
        "--model",
        "fake",
        "--embedder",
        str(tiny_embedder_dir),
        "--out",
        str(out),
        "--per-doc",
        str(PER_DOC),
        "--concurrency",
        "4",
        "--max-retries",
        "0",
        "--no-progress",
    ]
    with FakeLLM(script) as llm:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedforge.synthesis.cli", *args, "--llm", llm.url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            # wait (no deadline asserted) until records are on disk and requests are held in flight
            while proc.poll() is None and not (len(read_lines(out)) >= 4 and llm.calls > OPEN_REQUESTS):
                time.sleep(0.05)
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            gate.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL

    lines = read_lines(out)
    assert lines and all(line.endswith(b"\n") for line in lines)
    first = [json.loads(line) for line in lines]  # every line is a whole record
    done_keys = {(r["provenance"]["doc_id"], r["provenance"]["sample"]) for r in first}
    assert len(done_keys) == len(first) < N_DOCS * PER_DOC

    with FakeLLM() as llm:
        assert main([*args, "--llm", llm.url]) == 0
    assert f"{N_DOCS * PER_DOC - len(first)} done, 0 failed, {len(first)} skipped" in capsys.readouterr().err
    assert llm.calls == 2 * (N_DOCS * PER_DOC - len(first))  # finished keys were not asked for again
    final = [json.loads(line) for line in read_lines(out)]
    assert final[: len(first)] == first  # append-only: what was there is untouched
    keys = [(r["provenance"]["doc_id"], r["provenance"]["sample"]) for r in final]
    assert sorted(keys) == sorted((f"doc{i}", s) for i in range(N_DOCS) for s in range(PER_DOC))
