"""The ``embedforge`` command line: ``embed`` and ``rerank`` here; evaluation, training, synthesis
and serving register their own sub-commands."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from .textio import read_texts, write_embeddings

DEFAULT_EMBEDDER = "Qwen/Qwen3-Embedding-0.6B"
DEFAULT_RERANKER = "Qwen/Qwen3-Reranker-0.6B"
SUBCOMMAND_MODULES = (
    "embedforge.evaluation.cli",
    "embedforge.training.cli",
    "embedforge.synthesis.cli",
    "embedforge.server.cli",
)


def add_model_options(p: argparse.ArgumentParser, default_model: str) -> None:
    """Options every model-loading command shares."""
    p.add_argument(
        "--model", default=default_model, help=f"local directory or Hub id (default {default_model})"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default fp32 on CPU, bf16 on GPU)"
    )
    p.add_argument(
        "--max-length", type=int, default=None, help="tokens per input (default: the checkpoint's, else 8192)"
    )
    p.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="padded tokens per batch (default 4096 on CPU, 16384 on GPU)",
    )
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights")
    p.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own Python code")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def embedder_from_args(args: argparse.Namespace):
    """An ``Embedder`` from the options of ``add_model_options`` (shared by the sub-commands)."""
    from .embedder import Embedder

    return Embedder.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length,
        batch_tokens=args.batch_tokens,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
    )


def _cmd_embed(args: argparse.Namespace) -> int:
    texts, ids = read_texts(args.input, args.field)
    emb = embedder_from_args(args)
    show = not args.no_progress
    if args.queries:
        vecs = emb.encode_queries(texts, instruction=args.instruction, dim=args.dim, show_progress=show)
    else:
        if args.instruction is not None:
            raise SystemExit(
                "--instruction applies to queries only: add --queries (documents take no instruction)"
            )
        vecs = emb.encode_documents(texts, dim=args.dim, show_progress=show)
    write_embeddings(args.output, vecs, ids)
    print(f"wrote {vecs.shape[0]} x {vecs.shape[1]} embeddings to {args.output}", file=sys.stderr)
    return 0


def _cmd_rerank(args: argparse.Namespace) -> int:
    from .reranker import Reranker

    docs, ids = read_texts(args.documents, args.field)
    rr = Reranker.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        max_length=args.max_length or 8192,
        batch_tokens=args.batch_tokens,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
    )
    ranked = rr.rank(
        args.query, docs, top_k=args.top_k, instruction=args.instruction, show_progress=not args.no_progress
    )
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for r in ranked:
            row = {"index": r.index, "score": r.score, "document": r.document}
            if ids:
                row["id"] = ids[r.index]
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedforge",
        description="Qwen3 embedding and reranking: embed, rerank, eval, train, merge, synth, serve.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("embed", help="embed texts from a .txt/.jsonl/.parquet file into .npy or .parquet")
    p.add_argument("input", help="input file: .txt (one text per line), .jsonl or .parquet")
    p.add_argument("-o", "--output", required=True, help="output .npy or .parquet")
    p.add_argument(
        "--field", default=None, help="text field of JSONL/parquet rows (default: text, query, ...)"
    )
    p.add_argument("--queries", action="store_true", help="inputs are queries: add the query instruction")
    p.add_argument("--instruction", default=None, help="query instruction (default: the model's)")
    p.add_argument("--dim", type=int, default=None, help="Matryoshka dimension (32..hidden)")
    add_model_options(p, DEFAULT_EMBEDDER)
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("rerank", help="rank a file of documents against a query; JSONL out")
    p.add_argument("query", help="the query text")
    p.add_argument("documents", help="documents file: .txt (one per line), .jsonl or .parquet")
    p.add_argument("-o", "--output", default=None, help="output JSONL (default: stdout)")
    p.add_argument("--field", default=None, help="text field of JSONL/parquet rows")
    p.add_argument("--instruction", default=None, help="task instruction (default: web search)")
    p.add_argument("--top-k", type=int, default=None, help="keep the best K documents")
    add_model_options(p, DEFAULT_RERANKER)
    p.set_defaults(func=_cmd_rerank)

    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"embedforge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
