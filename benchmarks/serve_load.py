"""Load generator for ``embedforge serve``: dynamic batching vs batch-of-one serving.

Builds a small random Qwen3 embedding checkpoint (shape printed and saved; no weights are
downloaded), starts ``embedforge serve`` in a subprocess on 127.0.0.1 twice — with dynamic
batching and with ``--no-dynamic-batching`` (one request per model call) — and at each client
count runs N concurrent clients for a fixed time, each sending one text per request in a closed
loop. Reports requests/s, tokens/s (the server's own usage counts), p50/p99 latency and the gain
of dynamic batching, and saves everything as JSON.

    PYTHONPATH=src .venv/bin/python benchmarks/serve_load.py --duration 10 --clients 1 16 64

Loopback only; every run is bounded by ``--duration`` (plus a short warm-up).
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
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from embedforge.testing import Qwen3Shape, make_random_qwen3  # noqa: E402

# Small enough for a shared CPU; batching gains are larger with bigger models on accelerators.
SMALL = Qwen3Shape(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=384,
)
WORDS = "the of and to in is was for on that with as by at from his her an which be this are or had".split()


@dataclass
class RunResult:
    mode: str
    clients: int
    seconds: float
    requests: int
    errors: int
    requests_per_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    mean_batch_requests: float  # requests merged per model batch (server metrics)
    model_busy_fraction: float  # model time / wall time: near 1 = model-bound, lower = HTTP/client-bound


_SERIES = ("embedforge_batch_requests_sum", "embedforge_batch_requests_count", "embedforge_batch_seconds_sum")


def scrape(url: str) -> dict[str, float]:
    """The embedder's batch counters from the server's /metrics."""
    text = httpx.get(url + "/metrics").text
    out = {}
    for name in _SERIES:
        m = re.search(rf'^{name}{{model="embedder"}} ([0-9.e+-]+)$', text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def make_texts(n: int, seed: int) -> list[str]:
    """Texts of 16 to 128 words, a fixed mix for every run."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(16, 129)))) for _ in range(n)]


class Server:
    """``embedforge serve`` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, extra: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from embedforge.cli import main; sys.exit(main(sys.argv[1:]))",
                "serve",
                "--embedder",
                str(model),
                "--embedder-name",
                "bench",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-access-log",
                "--max-queue",
                "4096",
                *extra,
            ],
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

    def __enter__(self) -> str:
        if not self.ready.wait(300) or not self.port:
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while httpx.get(url + "/health").status_code != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("server never became healthy:\n" + "".join(self.log))
            time.sleep(0.1)
        return url

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def run_load(url: str, mode: str, clients: int, seconds: float, texts: list[str]) -> RunResult:
    latencies: list[float] = []
    tokens = 0
    errors = 0
    before = scrape(url)
    stop = time.monotonic() + seconds

    async def client(k: int) -> None:
        # One connection per client, its own pool: a shared httpx pool costs O(connections) per event
        # and becomes the bottleneck of the load generator at 64 clients.
        nonlocal tokens, errors
        async with httpx.AsyncClient(
            base_url=url, timeout=120, limits=httpx.Limits(max_connections=1)
        ) as http:
            i = k
            while time.monotonic() < stop:
                start = time.perf_counter()
                r = await http.post("/v1/embeddings", json={"model": "bench", "input": texts[i % len(texts)]})
                latencies.append(time.perf_counter() - start)
                if r.status_code == 200:
                    tokens += r.json()["usage"]["total_tokens"]
                else:
                    errors += 1
                i += clients

    began = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.monotonic() - began
    after = scrape(url)
    delta = {k: after[k] - before[k] for k in _SERIES}
    batches = delta["embedforge_batch_requests_count"]
    lat = np.array(latencies) * 1000
    return RunResult(
        mode,
        clients,
        round(elapsed, 2),
        len(latencies),
        errors,
        round(len(latencies) / elapsed, 2),
        round(tokens / elapsed, 1),
        round(float(np.percentile(lat, 50)), 2),
        round(float(np.percentile(lat, 99)), 2),
        round(float(lat.mean()), 2),
        round(delta["embedforge_batch_requests_sum"] / batches, 2) if batches else 0.0,
        round(delta["embedforge_batch_seconds_sum"] / elapsed, 3),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of load per (mode, clients) run"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measured run")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="CPU threads per server (1: stable figures on a shared CPU)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per (mode, clients), alternating modes")
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=Path(os.environ.get("EMBEDFORGE_SHARED", REPO.parent / "shared"))
        / "models"
        / "qwen3-tokenizer",
    )
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    args = parser.parse_args()
    if args.duration <= 0 or args.duration > 600:
        parser.error(f"--duration must be in (0, 600] seconds, got {args.duration}")
    if not 1 <= args.repeats <= 20:
        parser.error(f"--repeats must be in 1..20, got {args.repeats}")

    load_start = round(os.getloadavg()[0], 2)
    texts = make_texts(512, seed=0)
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = make_random_qwen3(
            Path(tmp) / "model",
            args.tokenizer,
            shape=SMALL,
            seed=0,
            append_eos=True,
            sentence_transformers=True,
        )
        modes = {"dynamic": [], "batch_of_one": ["--no-dynamic-batching"]}
        common = [
            "--max-batch-tokens",
            str(args.max_batch_tokens),
            "--torch-threads",
            str(args.torch_threads),
        ]
        # Both servers stay up and the runs alternate, so drift in machine load hits both modes alike.
        with (
            Server(model, common + modes["dynamic"]) as dyn_url,
            Server(model, common + modes["batch_of_one"]) as one_url,
        ):
            urls = {"dynamic": dyn_url, "batch_of_one": one_url}
            for clients in args.clients:
                for rep in range(args.repeats):
                    for mode in modes if rep % 2 == 0 else reversed(list(modes)):
                        asyncio.run(run_load(urls[mode], mode, clients, args.warmup, texts))
                        res = asyncio.run(run_load(urls[mode], mode, clients, args.duration, texts))
                        results.append(res)
                        print(
                            f"{mode:>12} clients={clients:<3} rep={rep} {res.requests_per_s:8.1f} req/s "
                            f"{res.tokens_per_s:10.0f} tok/s  p50 {res.p50_ms:7.1f} ms  p99 {res.p99_ms:7.1f} ms"
                            f"  batch {res.mean_batch_requests:5.1f} req  busy {res.model_busy_fraction:4.2f}"
                            f"  errors {res.errors}",
                            flush=True,
                        )
    summary, gains = [], {}
    for clients in args.clients:
        medians = {}
        for mode in ("dynamic", "batch_of_one"):
            runs = sorted(
                (r for r in results if r.mode == mode and r.clients == clients),
                key=lambda r: r.requests_per_s,
            )
            medians[mode] = runs[len(runs) // 2]  # the median run by throughput
            summary.append(asdict(medians[mode]))
        one = medians["batch_of_one"].requests_per_s
        gains[str(clients)] = round(medians["dynamic"].requests_per_s / one, 2) if one else None
        print(
            f"clients={clients:<3} dynamic batching / batch-of-one throughput (median runs): {gains[str(clients)]}x"
        )
    report = {
        "benchmark": "serve_load",
        "command": " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]]),
        "model": {
            "kind": "random Qwen3 embedding (last-token pooling)",
            "shape": asdict(SMALL),
            "describe": SMALL.describe(),
            "dtype": "float32",
        },
        "workload": {
            "request": "one text per POST /v1/embeddings",
            "text_words": "16-128",
            "duration_s": args.duration,
            "repeats": args.repeats,
            "warmup_s": args.warmup,
            "max_batch_tokens": args.max_batch_tokens,
            "torch_threads_per_server": args.torch_threads,
            "loop": "closed: each client sends its next request when the previous one returns",
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "client and server share the machine (and, here, a CPU shared with other jobs)",
            "loadavg_1m_start": load_start,
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
        },
        "summary_median_runs": summary,
        "all_runs": [asdict(r) for r in results],
        "dynamic_over_batch_of_one_throughput": gains,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
