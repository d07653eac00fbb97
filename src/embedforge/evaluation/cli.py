"""``embedforge eval retrieval|sts|bitext|crosslingual``: evaluation from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from embedforge.evaluation.encoding import parse_dims
from embedforge.spec import RUNTIME_OPTIONS, ModelSpec, add_progress_argument, process_threads


def default_cache_dir() -> Path:
    """``$EMBEDFORGE_CACHE/embeddings``, else ``~/.cache/embedforge/embeddings``."""
    root = os.environ.get("EMBEDFORGE_CACHE")
    return Path(root) / "embeddings" if root else Path.home() / ".cache" / "embedforge" / "embeddings"


def _add_model_args(p: argparse.ArgumentParser, *, model_required: bool = True) -> None:
    ModelSpec.add_arguments(
        p, model_help="embedding model: local directory or Hub id", model_required=model_required
    )
    p.add_argument(
        "--task",
        default=None,
        help="MTEB task name choosing the official Qwen3 instruction (default: from the data)",
    )
    p.add_argument("--instruction", default=None, help="override the task instruction")
    p.add_argument("--output", type=Path, default=None, help="write the JSON report here")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help=f"embedding cache (default: {default_cache_dir()})"
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    add_progress_argument(p, quiet_alias=True)


def _load_embedder(args: argparse.Namespace):
    return ModelSpec.required_from_args(args).load_embedder()


def _cache(args: argparse.Namespace) -> Path | None:
    return None if args.no_cache else (args.cache_dir or default_cache_dir())


def _finish(args: argparse.Namespace, report: dict[str, Any], lines: list[str]) -> int:
    from embedforge.evaluation.report import environment, write_json

    for line in lines:
        print(line)
    if args.output is not None:
        report = {**report, "environment": environment()}
        print(f"report: {write_json(report, args.output)}")
    return 0


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={100 * v:.2f}" for k, v in metrics.items())


def run_index_retrieval(args: argparse.Namespace) -> int:
    """``eval retrieval --index DIR``: score an existing index's exact search on ``--data``."""
    from embedforge.index.evaluate import evaluate_index

    unsupported = [
        flag
        for flag, given in (
            ("--model", args.model is not None),
            ("--reranker", args.reranker is not None),
            ("--dims", args.dims is not None),
            ("--ignore-identical-ids", args.ignore_identical_ids),
        )
        if given
    ]
    if unsupported:
        raise ValueError(
            f"{', '.join(unsupported)} cannot be combined with --index: the index's manifest names its model "
            "(use `embedforge search DIR --rerank R` to rerank an index's hits)"
        )
    report = evaluate_index(
        args.index,
        args.data,
        args.split,
        task=args.task,
        instruction=args.instruction,
        top_k=args.top_k,
        device=args.device,
        threads=args.threads,
    )
    out = {k: v for k, v in report.items() if k != "run"}
    lines = [
        f"index {report['index']} ({report['n_index_rows']} rows, model {report['model']}): "
        + _fmt(
            {k: report["metrics"][k] for k in ("ndcg@10", "recall@100", "mrr@10") if k in report["metrics"]}
        )
    ]
    if report["judged_documents_missing"]:
        lines.append(f"warning: {report['judged_documents_missing']} judged documents are not in the index")
    return _finish(args, out, lines)


def run_retrieval(args: argparse.Namespace) -> int:
    if args.index is not None:
        return run_index_retrieval(args)
    from embedforge.evaluation.data import load_beir
    from embedforge.evaluation.report import plot_dims
    from embedforge.evaluation.retrieval import evaluate_retrieval

    if args.model is None:
        raise ValueError("give --model MODEL (or --index DIR to evaluate an existing index)")
    dims = parse_dims(args.dims)
    data = load_beir(args.data, args.split)
    spec = ModelSpec.required_from_args(args)
    # the reranker runs like the embedder (device, dtype, ...) unless its own flags say otherwise
    rerank_spec = ModelSpec.from_args(args, "reranker-", inherit=RUNTIME_OPTIONS)
    process_threads(spec, rerank_spec)
    embedder = spec.load_embedder()
    reranker = rerank_spec.load_reranker() if rerank_spec is not None else None
    report = evaluate_retrieval(
        embedder,
        data,
        split=args.split,
        task=args.task,
        instruction=args.instruction,
        dims=dims,
        reranker=reranker,
        rerank_top=args.rerank_top,
        rerank_instruction=args.rerank_instruction,
        top_k=max(args.top_k, args.rerank_top if reranker is not None else 0),
        ignore_identical_ids=args.ignore_identical_ids,
        cache_dir=_cache(args),
        show_progress=not args.no_progress,
    )
    out = report.to_dict()
    lines = [f"{report.first_stage.name} (dim {report.first_stage.dim}): {_fmt(report.first_stage.metrics)}"]
    lines += [f"{s.name}: ndcg@10={100 * s.metrics['ndcg@10']:.2f}" for s in report.dims]
    if report.rerank is not None:
        lines.append(f"{report.rerank.name}: {_fmt(report.rerank.metrics)}")
    lines.append("timings: " + "  ".join(f"{k}={v:.1f}" for k, v in report.timings.items()))
    if dims:
        plot = args.plot or (args.output.with_suffix(".dims.png") if args.output else None)
        if plot is not None:
            out["dims_plot"] = str(
                plot_dims(report.dims, plot, title=f"{Path(args.model).name} on {data.name}")
            )
            lines.append(f"plot: {out['dims_plot']}")
    return _finish(args, out, lines)


def run_sts(args: argparse.Namespace) -> int:
    from embedforge.evaluation.data import load_sts_csv
    from embedforge.evaluation.sts import evaluate_sts

    data = load_sts_csv(args.data)
    report = evaluate_sts(
        _load_embedder(args),
        data,
        task=args.task,
        instruction=args.instruction,
        dim=args.dim,
        cache_dir=_cache(args),
        show_progress=not args.no_progress,
    )
    lines = [
        f"{data.name}: spearman={100 * report.spearman:.2f}  pearson={100 * report.pearson:.2f}  ({report.n_pairs} pairs)"
    ]
    return _finish(args, report.to_dict(), lines)


def run_bitext(args: argparse.Namespace) -> int:
    from embedforge.evaluation.bitext import evaluate_bitext
    from embedforge.evaluation.data import load_bitext

    data = load_bitext(args.source, args.target)
    report = evaluate_bitext(
        _load_embedder(args),
        data,
        task=args.task or "Tatoeba",
        instruction=args.instruction,
        dim=args.dim,
        cache_dir=_cache(args),
        show_progress=not args.no_progress,
    )
    lines = [
        f"{data.name}: accuracy source->target={100 * report.accuracy_source_to_target:.2f}  "
        f"target->source={100 * report.accuracy_target_to_source:.2f}  mean={100 * report.accuracy_mean:.2f}"
    ]
    return _finish(args, report.to_dict(), lines)


def run_crosslingual(args: argparse.Namespace) -> int:
    from embedforge.evaluation.crosslingual import evaluate_crosslingual
    from embedforge.evaluation.data import load_beir

    data = load_beir(args.data, args.split)
    report = evaluate_crosslingual(
        _load_embedder(args),
        data,
        task=args.task,
        instruction=args.instruction,
        cache_dir=_cache(args),
        show_progress=not args.no_progress,
    )
    lines = [f"all: {_fmt(report.retrieval.first_stage.metrics)}"]
    lines += [
        f"{lang}: " + _fmt({k: v for k, v in m.items() if k != "n_queries"})
        for lang, m in report.per_language.items()
    ]
    return _finish(args, report.to_dict(), lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` with its ``retrieval``, ``sts``, ``bitext`` and ``crosslingual`` commands."""
    ev = subparsers.add_parser("eval", help="evaluate an embedding model (and reranker) on real data")
    sub = ev.add_subparsers(dest="eval_command", required=True)

    r = sub.add_parser(
        "retrieval", help="BEIR-layout retrieval: nDCG, MAP, recall, MRR, P; reranking; dims sweep"
    )
    _add_model_args(r, model_required=False)  # --model, or --index DIR whose manifest names it
    r.add_argument(
        "--data", type=Path, required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv"
    )
    r.add_argument("--split", default="test")
    r.add_argument(
        "--index",
        type=Path,
        default=None,
        metavar="DIR",
        help="evaluate this existing index (embedforge index build) instead of encoding the corpus",
    )
    r.add_argument("--top-k", type=int, default=100, help="documents retrieved per query")
    ModelSpec.add_arguments(
        r, "reranker-", model_help="reranker model to rescore the first stage", inherit=RUNTIME_OPTIONS
    )
    r.add_argument("--rerank-top", type=int, default=100, help="first-stage documents reranked per query")
    r.add_argument(
        "--rerank-instruction", default=None, help="reranker instruction (default: the query instruction)"
    )
    r.add_argument("--dims", default=None, help="Matryoshka dimensions to sweep, e.g. 32,64,128,256,512,1024")
    r.add_argument(
        "--plot", type=Path, default=None, help="PNG of nDCG@10 against dimension (default: next to --output)"
    )
    r.add_argument(
        "--ignore-identical-ids",
        action="store_true",
        help="drop retrieved documents whose id is the query id",
    )
    r.set_defaults(func=run_retrieval)

    s = sub.add_parser("sts", help="STS pairs: Spearman and Pearson of cosine similarity")
    _add_model_args(s)
    s.add_argument("--data", type=Path, required=True, help="CSV without header: sentence1,sentence2,score")
    s.add_argument("--dim", type=int, default=None, help="Matryoshka dimension (default: full)")
    s.set_defaults(func=run_sts)

    b = sub.add_parser("bitext", help="aligned bitext: nearest-neighbour accuracy both directions (Tatoeba)")
    _add_model_args(b)
    b.add_argument("--source", type=Path, required=True, help="one sentence per line")
    b.add_argument("--target", type=Path, required=True, help="line i translates line i of --source")
    b.add_argument("--dim", type=int, default=None, help="Matryoshka dimension (default: full)")
    b.set_defaults(func=run_bitext)

    c = sub.add_parser(
        "crosslingual", help="multilingual pool (XQuAD-R): MAP@100, nDCG@10 per query language"
    )
    _add_model_args(c)
    c.add_argument("--data", type=Path, required=True, help="BEIR folder of the pool, e.g. xquad-r/pool")
    c.add_argument("--split", default="test")
    c.set_defaults(func=run_crosslingual)


def main(argv: list[str] | None = None) -> int:
    """Run the ``eval`` commands alone (``python -m embedforge.evaluation.cli eval sts ...``)."""
    parser = argparse.ArgumentParser(prog="embedforge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
