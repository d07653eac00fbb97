"""Bounded load and fault test of ``embedforge serve``: good traffic, bad inputs, abandoned clients.

Builds a tiny random Qwen3 embedder and reranker (``embedforge.testing.make_random_qwen3``; no
weights downloaded), starts ``embedforge serve`` in a subprocess on 127.0.0.1 with an API key and
small limits, and for ``--duration`` seconds runs ``--clients`` concurrent clients in a closed
loop. Each request is drawn from a fixed, seeded mix: good embeddings and reranks, and bad inputs
each with the status it must get (lone surrogates 422, bad JSON 422, no or wrong key 401, too many
inputs 413, oversized body 413, too long with truncate=false 400, bad dimensions 400, unknown
model 404, token id outside the vocabulary 400). Besides, ``--abandon`` clients send a large
rerank and hang up; the server's own counters show whether that work was cancelled.

An answer is *unexpected* when its status is neither the expected one nor 429 (backpressure), or
the connection broke. After the load the server must still be healthy, give the same embedding as
before it, and shut down cleanly on SIGTERM. Figures (requests, errors by status, p50/p99 latency
of good requests, cancelled work) are printed and saved as JSON.

    PYTHONPATH=src .venv/bin/python benchmarks/serve_reliability.py --duration 15 --clients 16

Loopback only; every run is bounded by ``--duration`` (at most 300 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from embedforge.testing import Qwen3Shape, make_random_qwen3  # noqa: E402

SHAPE = Qwen3Shape(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    intermediate_size=128,
)  # fmt: skip
KEY = "reliability-key"
MAX_INPUTS = 64
MAX_BODY = 256 * 1024
WORDS = "the of and to in is was for on that with as by at from his her an which be this are or had".split()


@dataclass(frozen=True)
class Probe:
    """One kind of request: how to send it and the status it must get."""

    name: str
    path: str
    expected: int
    weight: float


PROBES = [
    Probe("embed", "/v1/embeddings", 200, 0.40),
    Probe("rerank", "/v1/rerank", 200, 0.25),
    Probe("lone_surrogate", "/v1/embeddings", 422, 0.04),
    Probe("lone_surrogate_rerank", "/v1/rerank", 422, 0.03),
    Probe("bad_json", "/v1/embeddings", 422, 0.03),
    Probe("no_key", "/v1/embeddings", 401, 0.03),
    Probe("wrong_key_bad_json", "/v1/rerank", 401, 0.03),
    Probe("too_many_inputs", "/v1/embeddings", 413, 0.03),
    Probe("body_too_large", "/v1/embeddings", 413, 0.03),
    Probe("too_long_no_truncate", "/v1/embeddings", 400, 0.03),
    Probe("bad_dimensions", "/v1/embeddings", 400, 0.03),
    Probe("unknown_model", "/v1/embeddings", 404, 0.03),
    Probe("bad_token_id", "/v1/embeddings", 400, 0.04),
]


def text(rng: np.random.Generator, lo: int = 4, hi: int = 64) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi))))


def build(probe: Probe, rng: np.random.Generator) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one request of ``probe``'s kind."""
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    body: object
    if probe.name == "embed":
        body = {"input": [text(rng) for _ in range(int(rng.integers(1, 9)))], "dimensions": 32}
    elif probe.name == "rerank":
        body = {"query": text(rng, 3, 12), "documents": [text(rng) for _ in range(int(rng.integers(2, 21)))]}
    elif probe.name == "lone_surrogate":
        return b'{"input": ["fine", "bad \\ud800 text"]}', auth
    elif probe.name == "lone_surrogate_rerank":
        return b'{"query": "q", "documents": ["d", "\\udfff"]}', auth
    elif probe.name == "bad_json":
        return b'{"input": ["unterminated', auth
    elif probe.name == "no_key":
        return json.dumps({"input": "hello"}).encode(), {"Content-Type": "application/json"}
    elif probe.name == "wrong_key_bad_json":
        return b"{not json", {"Authorization": "Bearer wrong", "Content-Type": "application/json"}
    elif probe.name == "too_many_inputs":
        body = {"input": ["x"] * (MAX_INPUTS + 1)}
    elif probe.name == "body_too_large":
        body = {"input": "word " * (MAX_BODY // 4)}
    elif probe.name == "too_long_no_truncate":
        body = {"input": "word " * 600, "truncate": False}
    elif probe.name == "bad_dimensions":
        body = {"input": "hello", "dimensions": int(rng.choice([1, 31, 65, 4096]))}
    elif probe.name == "unknown_model":
        body = {"input": "hello", "model": "text-embedding-3-small"}
    elif probe.name == "bad_token_id":
        body = {"input": [1, 2, 10**9], "input_token_ids": True}  # the vocabulary check, not the opt-in
    else:
        raise ValueError(probe.name)
    return json.dumps(body).encode(), auth


class Server:
    """``embedforge serve`` in a subprocess on a free loopback port."""

    def __init__(self, embedder: Path, reranker: Path, args: argparse.Namespace) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "EMBEDFORGE_API_KEY": KEY}
        argv = ["serve", "--embedder", str(embedder), "--reranker", str(reranker)]
        argv += ["--embedder-name", "emb", "--reranker-name", "rr", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--no-access-log", "--threads", str(args.threads), "--max-length", "512"]
        argv += ["--max-queue", str(args.max_queue), "--max-request-inputs", str(MAX_INPUTS)]
        argv += ["--max-body-bytes", str(MAX_BODY), "--max-batch-tokens", "4096", "--graceful-timeout-s", "5"]
        code = "import sys; from embedforge.cli import main; sys.exit(main(sys.argv[1:]))"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.port = 0
        self.ready = threading.Event()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self.ready.set()
        self.ready.set()

    def start(self) -> str:
        if not self.ready.wait(300) or not self.port:
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while httpx.get(url + "/health").status_code != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("server never became healthy:\n" + "".join(self.log))
            time.sleep(0.1)
        return url

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def engine_counts(url: str) -> dict[str, float]:
    """The engine's request outcomes and skipped model calls, from /metrics."""
    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        m = re.match(r'embedforge_engine_(requests|steps)_total\{model="(\w+)",outcome="(\w+)"\} (\S+)', line)
        if m:
            out[f"{m.group(2)}.{m.group(1)}.{m.group(3)}"] = float(m.group(4))
    return out


async def abandon(url: str, n_docs: int, wait_s: float) -> None:
    """Send a large rerank on a raw connection and hang up before the answer."""
    host, port = url.removeprefix("http://").split(":")
    docs = [f"document {i} " + "word " * 450 for i in range(n_docs)]  # long: cut to the model's window
    body = json.dumps({"query": "which document?", "documents": docs}).encode()
    head = (
        f"POST /v1/rerank HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode() + body)
    await writer.drain()
    await asyncio.sleep(wait_s)
    writer.close()
    await writer.wait_closed()


async def run(url: str, args: argparse.Namespace) -> dict:
    weights = np.array([p.weight for p in PROBES])
    weights /= weights.sum()
    statuses: Counter[int] = Counter()
    by_probe: dict[str, Counter[str]] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    unexpected: list[str] = []
    broken = 0
    stop = time.monotonic() + args.duration

    async def client(k: int) -> None:
        nonlocal broken
        rng = np.random.default_rng(args.seed + k)
        # One keep-alive connection per client: an error that dropped it would show as a new connection.
        async with httpx.AsyncClient(
            base_url=url, timeout=120, limits=httpx.Limits(max_connections=1)
        ) as http:
            while time.monotonic() < stop:
                probe = PROBES[int(rng.choice(len(PROBES), p=weights))]
                content, headers = build(probe, rng)
                start = time.perf_counter()
                try:
                    r = await http.post(probe.path, content=content, headers=headers)
                except httpx.HTTPError as exc:
                    broken += 1
                    unexpected.append(f"{probe.name}: {type(exc).__name__}")
                    continue
                elapsed = time.perf_counter() - start
                statuses[r.status_code] += 1
                by_probe[probe.name][str(r.status_code)] += 1
                if r.status_code == probe.expected:
                    latencies[probe.name].append(elapsed)
                elif r.status_code != 429:
                    unexpected.append(f"{probe.name}: {r.status_code} {r.text[:200]}")

    async def abandoners() -> None:
        for _ in range(args.abandon):  # spread over the first half of the run
            await asyncio.sleep(args.duration / (2 * max(args.abandon, 1)))
            await abandon(url, args.abandon_docs, wait_s=0.05)

    began = time.monotonic()
    await asyncio.gather(abandoners(), *(client(k) for k in range(args.clients)))
    elapsed = time.monotonic() - began
    good = np.array(latencies["embed"] + latencies["rerank"]) * 1000
    total = sum(statuses.values())
    return {
        "seconds": round(elapsed, 2),
        "requests": total + broken,
        "requests_per_s": round(total / elapsed, 1),
        "ok": statuses[200],
        "by_status": {str(k): v for k, v in sorted(statuses.items())},
        "by_probe": {name: dict(c) for name, c in sorted(by_probe.items())},
        "expected_status": {p.name: p.expected for p in PROBES},
        "unexpected": len(unexpected),
        "unexpected_examples": unexpected[:10],
        "connection_errors": broken,
        "server_errors_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "good_latency_ms": {
            "p50": round(float(np.percentile(good, 50)), 1) if good.size else None,
            "p99": round(float(np.percentile(good, 99)), 1) if good.size else None,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load (at most 300)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--abandon", type=int, default=4, help="clients that send a big rerank and hang up")
    parser.add_argument(
        "--abandon-docs", type=int, default=MAX_INPUTS, help="documents in each abandoned rerank"
    )
    parser.add_argument("--max-queue", type=int, default=64, help="server queue per model (429 beyond)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=Path(os.environ.get("EMBEDFORGE_SHARED", REPO.parent / "shared"))
        / "models"
        / "qwen3-tokenizer",
    )
    parser.add_argument(
        "--output", type=Path, default=REPO / "benchmarks" / "results" / "serve_reliability.json"
    )
    args = parser.parse_args()
    if not 0 < args.duration <= 300:
        parser.error(f"--duration must be in (0, 300] seconds, got {args.duration}")
    if not 1 <= args.clients <= 256:
        parser.error(f"--clients must be in 1..256, got {args.clients}")

    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        embedder = make_random_qwen3(
            Path(tmp) / "embedder",
            args.tokenizer,
            shape=SHAPE,
            seed=1,
            append_eos=True,
            sentence_transformers=True,
        )
        reranker = make_random_qwen3(Path(tmp) / "reranker", args.tokenizer, shape=SHAPE, seed=2)
        server = Server(embedder, reranker, args)
        try:
            url = server.start()
            auth = {"Authorization": f"Bearer {KEY}"}
            probe = {"model": "emb", "input": ["the same text before and after"]}
            before = httpx.post(url + "/v1/embeddings", json=probe, headers=auth).json()["data"][0][
                "embedding"
            ]
            counts_before = engine_counts(url)
            load = asyncio.run(run(url, args))
            healthy = httpx.get(url + "/health").status_code == 200
            after = httpx.post(url + "/v1/embeddings", json=probe, headers=auth).json()["data"][0][
                "embedding"
            ]
            counts = {k: v - counts_before.get(k, 0.0) for k, v in engine_counts(url).items()}
        finally:
            exit_code = server.stop()
    log = "".join(server.log)
    result = {
        "command": "benchmarks/serve_reliability.py " + " ".join(sys.argv[1:]),
        "clients": args.clients,
        "duration_s": args.duration,
        "abandoned_clients": args.abandon,
        "abandoned_docs_each": args.abandon_docs,
        **load,
        "engine": {
            "reranker_cancelled": counts.get("reranker.requests.cancelled", 0.0),
            "reranker_skipped_queued": counts.get("reranker.requests.skipped_queued", 0.0),
            "reranker_stopped_running": counts.get("reranker.requests.stopped_running", 0.0),
            "reranker_steps_skipped": counts.get("reranker.steps.skipped", 0.0),
            "embedder_cancelled": counts.get("embedder.requests.cancelled", 0.0),
        },
        "healthy_after_load": healthy,
        "same_embedding_after_load": before == after,
        "sigterm_exit_code": exit_code,
        "traceback_in_log": "Traceback" in log,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "server_threads": args.threads,
            "load_avg_start": load_start,
        },
    }
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    ok = (
        result["unexpected"] == 0
        and healthy
        and result["same_embedding_after_load"]
        and exit_code in (0, -signal.SIGTERM)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
