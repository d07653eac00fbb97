"""``embedforge serve`` in a real subprocess: flags and EMBEDFORGE_* settings, graceful SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedforge.cli import main as embedforge_main
from embedforge.server.cli import settings_from_args
from embedforge.server.settings import ServerSettings

SRC = Path(__file__).resolve().parents[2] / "src"


def _parse_serve(argv: list[str]):
    import argparse

    from embedforge.server.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_flags_win_over_environment(monkeypatch):
    monkeypatch.setenv("EMBEDFORGE_MAX_QUEUE", "7")
    monkeypatch.setenv("EMBEDFORGE_API_KEY", "from-env")
    monkeypatch.setenv("EMBEDFORGE_MAX_BATCH_TOKENS", "999")
    args = _parse_serve(["--embedder", "/m", "--max-batch-tokens", "128", "--no-dynamic-batching"])
    settings = settings_from_args(args)
    assert settings.max_queue == 7 and settings.max_batch_tokens == 128
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "from-env"
    assert settings.dynamic_batching is False and settings.embedder_id == "/m"


def test_invalid_settings_fail_at_start_up_with_a_clear_message(capsys, monkeypatch):
    for name in [k for k in os.environ if k.startswith("EMBEDFORGE_") and k != "EMBEDFORGE_SHARED"]:
        monkeypatch.delenv(name)
    assert embedforge_main(["serve"]) == 2
    assert "--embedder" in capsys.readouterr().err
    assert embedforge_main(["serve", "--embedder", "/m", "--max-batch-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert "max_batch_tokens" in err and "greater than 0" in err
    monkeypatch.setenv("EMBEDFORGE_PORT", "99999")
    assert embedforge_main(["serve", "--embedder", "/m"]) == 2
    assert "port" in capsys.readouterr().err
    monkeypatch.delenv("EMBEDFORGE_PORT")
    with pytest.raises(ValueError, match="api_key is empty"):
        ServerSettings(embedder="/m", api_key=" ")
    with pytest.raises(ValueError, match="both served as"):
        ServerSettings(embedder="/m", reranker="/m")


class _Subprocess:
    """The server in its own process; stderr collected in the background."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.port_ready = threading.Event()
        self.port = 0
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from embedforge.cli import main; sys.exit(main(sys.argv[1:]))",
                *argv,
            ],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self.port_ready.set()
        self.port_ready.set()


def _scrape(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests(tiny_embedder_dir, embedder):
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "EMBEDFORGE_MAX_BATCH_TOKENS": "256",  # small batches: slow drain
        # the drain may take as long as it needs: on a starved CPU it once outlasted the default 30 s,
        # and a request still running then is cancelled with a 503 (by design, tested elsewhere)
        "EMBEDFORGE_GRACEFUL_TIMEOUT_S": "600",
    }
    srv = _Subprocess(
        [
            "serve",
            "--embedder",
            str(tiny_embedder_dir),
            "--embedder-name",
            "m",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--torch-threads",
            "1",
        ],
        env,
    )
    try:
        assert srv.port_ready.wait(180) and srv.port, "".join(srv.lines)
        url = f"http://127.0.0.1:{srv.port}"
        with httpx.Client(base_url=url, timeout=120) as c:
            while c.get("/health").status_code != 200:
                assert srv.proc.poll() is None, "".join(srv.lines)
                time.sleep(0.05)

            n = 24
            texts = [[f"request {i} text {j} " + "word " * 60 for j in range(24)] for i in range(n)]
            with ThreadPoolExecutor(n) as pool:
                futures = [
                    pool.submit(
                        httpx.post, url + "/v1/embeddings", json={"model": "m", "input": t}, timeout=300
                    )
                    for t in texts
                ]
                # Wait until the server has accepted all n requests (in flight or answered), then stop it.
                while True:
                    metrics = c.get("/metrics").text
                    in_flight = _scrape(metrics, 'embedforge_requests_in_flight{route="/v1/embeddings"}')
                    done = _scrape(
                        metrics,
                        'embedforge_requests_total{method="POST",route="/v1/embeddings",status="200"}',
                    )
                    if in_flight + done >= n:
                        break
                    failed = [f.result().text for f in futures if f.done() and f.result().status_code != 200]
                    assert not failed and srv.proc.poll() is None, (failed, "".join(srv.lines))
                    time.sleep(0.01)
                srv.proc.send_signal(signal.SIGTERM)
                responses = [f.result() for f in futures]
        # uvicorn re-raises the signal once shut down cleanly, so the status reads "killed by SIGTERM"
        assert srv.proc.wait(120) in (0, -signal.SIGTERM), "".join(srv.lines)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
    assert in_flight > 0, "every request had finished before SIGTERM: the test did not exercise shutdown"
    assert [r.status_code for r in responses] == [200] * n
    for t, r in zip(texts, responses, strict=True):
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, embedder.encode(t, batch_tokens=256), rtol=0, atol=1e-6)
    log = "".join(srv.lines)
    assert "Shutting down" in log and "Application shutdown complete" in log and "Traceback" not in log


@pytest.mark.slow
def test_a_model_that_fails_to_load_stops_the_server_with_status_1(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    missing = tmp_path / "no-such-model"
    srv = _Subprocess(["serve", "--embedder", str(missing), "--port", "0"], env)
    try:
        assert srv.proc.wait(180) == 1
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
    srv.port_ready.wait(10)  # the reader thread has seen the end of stderr
    log = "".join(srv.lines)
    assert "no-such-model" in log and "does not exist" in log
