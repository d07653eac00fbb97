"""``embedforge synth ...``: synthetic data generation, selection and hard negatives.

    embedforge synth retrieval --corpus corpus.jsonl --llm http://localhost:8000/v1 --model Qwen/Qwen3-32B \\
        --out synth.jsonl --languages en=0.7,zh=0.3 --per-doc 2 --seed 0
    embedforge synth filter --in synth.jsonl --out kept.jsonl --model Qwen/Qwen3-Embedding-0.6B --min-cos 0.7
    embedforge synth negatives --in kept.jsonl --out train.jsonl --embedder Qwen/Qwen3-Embedding-0.6B \\
        --corpus corpus.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict

from embedforge.scaleout.cluster import EngineOptions, add_engine_arguments
from embedforge.spec import ModelSpec, add_progress_argument, process_threads
from embedforge.synthesis.llm import LLMFatalError

DEFAULT_EMBEDDER = "Qwen/Qwen3-Embedding-0.6B"
GENERATION_TASKS = ("retrieval", "bitext", "sts", "classification")


def _embedder_spec(args: argparse.Namespace) -> ModelSpec:
    """``--model`` (filter) or ``--embedder`` with its ``--embedder-*`` options, which default to
    the unprefixed ones."""
    if getattr(args, "embedder", None) is not None:
        spec = ModelSpec.from_args(args, "embedder-", inherit=ModelSpec.option_names())
    else:
        spec = ModelSpec.from_args(args)
    if spec is None:
        raise ValueError("no embedding model given (--model / --embedder)")
    return spec


def _llm_spec(args: argparse.Namespace) -> ModelSpec | None:
    """The loading options of a ``local:PATH`` LLM (``--llm-*``, defaulting to the unprefixed ones)."""
    if not args.llm.startswith("local:"):
        return None
    path = args.llm[len("local:") :]
    return ModelSpec.from_args(args, "llm-", model=path, inherit=ModelSpec.option_names())


def _add_generation_options(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument(
        "--corpus",
        required=True,
        help="BEIR corpus.jsonl, JSONL with a text field, or a folder of text files",
    )
    p.add_argument(
        "--text-field",
        default=None,
        help="JSONL field holding the text (default: text/contents/content/passage/body)",
    )
    p.add_argument(
        "--llm",
        required=True,
        help="OpenAI-compatible base URL (e.g. http://host:8000/v1) or local:PATH (a directory or Hub id); "
        "with --engine ray a comma-separated list of base URLs, --concurrency requests in flight on each",
    )
    p.add_argument("--model", default=None, help="model name sent to the endpoint (required with a URL)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument(
        "--extra-body",
        default=None,
        help='JSON merged into every request, e.g. \'{"chat_template_kwargs": {"enable_thinking": false}}\' (vLLM, SGLang)',
    )
    p.add_argument(
        "--response-format",
        choices=("none", "json_schema", "json_object"),
        default="none",
        help="send each step's JSON schema for constrained decoding: json_schema (OpenAI, vLLM, SGLang, "
        "llama.cpp's llama-server), json_object with a schema (llama-cpp-python's server); default none: "
        "the prompt alone asks for JSON, as an endpoint of unknown make may reject the field",
    )
    p.add_argument(
        "--out", required=True, help="output JSONL (resumed if it exists; failures go to OUT.failed.jsonl)"
    )
    p.add_argument(
        "--report",
        default=None,
        help="also write the run's report (counts, per-step parse stats) as JSON here",
    )
    p.add_argument(
        "--languages",
        nargs="+",
        default=["en"],
        help="languages of the generated text with optional weights: en zh=2 or en=0.7,zh=0.3",
    )
    p.add_argument("--corpus-language", default="en", help="language the corpus is written in")
    p.add_argument("--lengths", default="5-20", help="length in words, drawn uniformly from LOW-HIGH")
    p.add_argument(
        "--difficulties",
        nargs="+",
        default=None,
        help="difficulty distribution (high_school university phd, optional =WEIGHT); "
        + ("default: stage 1's choice" if task == "retrieval" else "default: uniform"),
    )
    if task == "retrieval":
        p.add_argument(
            "--personas",
            default=None,
            help='persona library (JSONL {"persona": ...} or one a line); default: built-in',
        )
        ModelSpec.add_arguments(
            p,
            "embedder-",
            default_model=DEFAULT_EMBEDDER,
            model_help="embedding model that retrieves the personas",
            inherit=ModelSpec.option_names(),
        )
        p.add_argument(
            "--question-types",
            nargs="+",
            default=None,
            help="question-type distribution overriding stage 1's choice (keywords acquire_knowledge ...)",
        )
        p.add_argument(
            "--top-personas", type=int, default=5, help="candidate personas per passage (paper: 5)"
        )
        p.add_argument(
            "--cache-dir", default=None, help="keep the persona library's embeddings here across runs"
        )
    p.add_argument("--per-doc", type=int, default=1, help="records per document")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--limit", type=int, default=None, help="use only the first N documents")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument(
        "--max-retries",
        type=int,
        default=6,
        help="retries per request (timeouts, 429, 5xx, dropped connections)",
    )
    p.add_argument(
        "--backoff", type=float, default=0.5, help="base delay of the jittered exponential backoff, seconds"
    )
    p.add_argument("--max-backoff", type=float, default=30.0, help="longest wait between retries, seconds")
    p.add_argument(
        "--max-invalid", type=int, default=3, help="attempts per LLM call when the answer is not valid JSON"
    )
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=512, help="answer budget per LLM call")
    p.add_argument(
        "--max-passage-chars", type=int, default=6000, help="passages are cut to this length in prompts"
    )
    p.add_argument(
        "--fsync", action="store_true", help="fsync after every record (survives power loss, slower)"
    )
    # unprefixed options: the default of every model the command loads (embedder and local LLM)
    ModelSpec.add_arguments(p, model_flag=False)
    # --llm itself is above; its options apply to a local:PATH model only
    ModelSpec.add_arguments(p, "llm-", model_flag=False, inherit=ModelSpec.option_names())
    add_engine_arguments(p)  # --engine ray: one Ray actor per endpoint of --llm
    add_progress_argument(p)


def _json_object(text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--extra-body must be a JSON object, got {text!r} ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"--extra-body must be a JSON object, got {text!r}")
    return obj


def run_generate(args: argparse.Namespace) -> int:
    from embedforge.synthesis.config import (
        DIFFICULTY_NAMES,
        QUESTION_TYPE_NAMES,
        Choice,
        LengthRange,
        SynthesisConfig,
        language_name,
    )
    from embedforge.synthesis.llm import LLMBackend, RetryPolicy, make_backend
    from embedforge.synthesis.pipeline import PersonaIndex, synthesize
    from embedforge.synthesis.sources import load_corpus, load_personas

    task = args.synth_task
    cfg = SynthesisConfig(
        languages=Choice.parse(args.languages, normalise=language_name),
        corpus_language=args.corpus_language,
        lengths=LengthRange.parse(args.lengths),
        question_types=Choice.parse(args.question_types, allowed=QUESTION_TYPE_NAMES)
        if getattr(args, "question_types", None)
        else None,
        difficulties=Choice.parse(args.difficulties, allowed=DIFFICULTY_NAMES) if args.difficulties else None,
        per_doc=args.per_doc,
        seed=args.seed,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        max_invalid=args.max_invalid,
        top_personas=getattr(args, "top_personas", 5),
        max_passage_chars=args.max_passage_chars,
    )
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    docs = load_corpus(args.corpus, text_field=args.text_field)[: args.limit]
    llm_spec = _llm_spec(args)
    embedder_spec = _embedder_spec(args) if task == "retrieval" else None
    process_threads(llm_spec, embedder_spec)
    personas = None
    if embedder_spec is not None:
        from embedforge.store import EmbeddingStore

        library = load_personas(args.personas)
        cache = EmbeddingStore(args.cache_dir) if args.cache_dir else None
        personas = PersonaIndex(
            embedder_spec.load_embedder(), library, cache=cache, show_progress=not args.no_progress
        )
    engine = EngineOptions.from_args(args)
    with contextlib.ExitStack() as stack:
        if engine.is_ray:  # requests fan out over the endpoints; the store stays here
            from embedforge.scaleout import ray_cluster
            from embedforge.scaleout.synth import RayFanoutBackend

            if args.llm.startswith("local:") or not args.model:
                raise ValueError("--engine ray needs --llm http(s) base URL(s) and the --model they serve")
            stack.enter_context(ray_cluster(engine))
            fanout = RayFanoutBackend(
                args.llm.split(","),
                args.model,
                api_key=os.environ.get(args.api_key_env),
                concurrency=args.concurrency,
                timeout=args.timeout,
                retry=RetryPolicy(args.max_retries, args.backoff, args.max_backoff),
                seed=args.seed,
                extra_body=_json_object(args.extra_body),
                response_format=args.response_format,
            )
            stack.callback(fanout.shutdown)
            backend: LLMBackend = fanout
        else:
            backend = make_backend(
                args.llm,
                args.model,
                api_key=os.environ.get(args.api_key_env),
                concurrency=args.concurrency,
                timeout=args.timeout,
                retry=RetryPolicy(args.max_retries, args.backoff, args.max_backoff),
                seed=args.seed,
                extra_body=_json_object(args.extra_body),
                local=llm_spec,
                response_format=args.response_format,
            )
        report = synthesize(
            task,
            docs,
            backend,
            args.out,
            cfg,
            personas=personas,
            show_progress=not args.no_progress,
            fsync=args.fsync,
        )
        summary = getattr(backend, "summary", None)
        engine_summary = {"engine": summary()} if callable(summary) else {}
    if engine_summary:  # per endpoint: requests, retries, failures; restarted actors
        print(json.dumps(engine_summary, indent=2), file=sys.stderr)
    print(
        f"{report.task}: {report.done} done, {report.failed} failed, {report.skipped} skipped (of {report.total}); "
        f"{report.requests} requests, {report.retries} retries, {report.rate_limited} rate-limited, "
        f"{report.invalid_answers} invalid answers ({report.first_try_invalid} on the first try), "
        f"{report.completion_tokens} tokens generated in {report.seconds:.1f} s -> {report.out}"
        + (f" (failures: {report.failed_out})" if report.failed else ""),
        file=sys.stderr,
    )
    if args.report:
        from pathlib import Path

        written = {**asdict(report), "out": str(report.out), "failed_out": str(report.failed_out)}
        written.update(invalid_answers=report.invalid_answers, first_try_invalid=report.first_try_invalid)
        Path(args.report).write_text(
            json.dumps({**written, **engine_summary}, indent=2) + "\n", encoding="utf-8"
        )
    return 0 if report.failed == 0 else 3


def run_filter(args: argparse.Namespace) -> int:
    from embedforge.synthesis.selection import filter_records
    from embedforge.synthesis.store import iter_jsonl, write_jsonl

    near = None if args.near_dup <= 0 else args.near_dup
    records = list(iter_jsonl(args.input))
    kept, report = filter_records(
        _embedder_spec(args).load_embedder(),
        records,
        min_cos=args.min_cos,
        near_dup=near,
        use_instructions=not args.no_instruction,
        show_progress=not args.no_progress,
    )
    write_jsonl(args.out, kept)
    print(f"filter: {asdict(report)} -> {args.out}", file=sys.stderr)
    return 0


def run_negatives(args: argparse.Namespace) -> int:
    from embedforge.synthesis.selection import add_negatives
    from embedforge.synthesis.sources import load_corpus
    from embedforge.synthesis.store import iter_jsonl, write_jsonl

    records = list(iter_jsonl(args.input))
    corpus = [d.text for d in load_corpus(args.corpus, text_field=args.text_field)] if args.corpus else None
    out = add_negatives(
        _embedder_spec(args).load_embedder(),
        records,
        corpus=corpus,
        k=args.k,
        skip_top=args.skip_top,
        show_progress=not args.no_progress,
    )
    write_jsonl(args.out, out)
    n_neg = sum(len(r["negatives"]) for r in out)
    print(f"negatives: {len(out)} records, {n_neg} negatives -> {args.out}", file=sys.stderr)
    return 0


def _guard(fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ValueError, FileNotFoundError, LLMFatalError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` command group to the ``embedforge`` parser."""
    synth = subparsers.add_parser(
        "synth", help="persona-driven synthetic training data (generate, filter, negatives)"
    )
    sub = synth.add_subparsers(
        dest="synth_task", required=True, metavar="{" + ",".join(GENERATION_TASKS) + ",filter,negatives}"
    )
    helps = {
        "retrieval": "queries for passages: the paper's two-stage, persona-driven recipe",
        "bitext": "sentence pairs in two languages (bitext mining)",
        "sts": "a sentence, its paraphrase and a same-topic sentence of other meaning",
        "classification": "texts with labels of an invented classification task",
    }
    for task in GENERATION_TASKS:
        p = sub.add_parser(task, help=helps[task])
        _add_generation_options(p, task)
        p.set_defaults(func=_guard(run_generate))
    f = sub.add_parser("filter", help="keep records with cos(query, positive) >= --min-cos; drop duplicates")
    f.add_argument("--in", dest="input", required=True, help="records JSONL")
    f.add_argument("--out", required=True, help="kept records JSONL")
    f.add_argument("--min-cos", type=float, default=0.7, help="lowest cosine kept (the paper: 0.7)")
    f.add_argument(
        "--near-dup",
        type=float,
        default=0.95,
        help="query cosine above which a later record is a near duplicate; 0 = off",
    )
    f.add_argument(
        "--no-instruction",
        action="store_true",
        help="embed queries without their instructions (for embedders not trained with instructions)",
    )
    ModelSpec.add_arguments(
        f, default_model=DEFAULT_EMBEDDER, model_help="embedding model that scores the pairs"
    )
    add_progress_argument(f)
    f.set_defaults(func=_guard(run_filter))
    n = sub.add_parser("negatives", help="mine hard negatives into the training JSONL")
    n.add_argument("--in", dest="input", required=True, help="records JSONL")
    n.add_argument("--out", required=True, help="records with negatives JSONL")
    n.add_argument(
        "--corpus",
        default=None,
        help="corpus to mine retrieval negatives from (default: the records' positives)",
    )
    n.add_argument("--text-field", default=None, help="JSONL field holding the corpus text")
    n.add_argument("--k", type=int, default=7, help="negatives per record")
    n.add_argument(
        "--skip-top", type=int, default=10, help="ranks skipped before taking negatives (likely positives)"
    )
    ModelSpec.add_arguments(n, model_flag=False)  # the defaults of the --embedder-* options
    ModelSpec.add_arguments(
        n,
        "embedder-",
        default_model=DEFAULT_EMBEDDER,
        model_help="embedding model that ranks the corpus",
        inherit=ModelSpec.option_names(),
    )
    add_progress_argument(n)
    n.set_defaults(func=_guard(run_negatives))


def main(argv: list[str] | None = None) -> int:
    """Run the ``synth`` group alone: ``python -m embedforge.synthesis.cli synth ...``."""
    parser = argparse.ArgumentParser(prog="embedforge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
