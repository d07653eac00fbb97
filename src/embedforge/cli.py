"""The ``embedforge`` command line: ``embed`` and ``rerank`` here; evaluation, training, synthesis
and serving register their own sub-commands."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .scaleout.cluster import EngineOptions, add_engine_arguments
from .spec import ModelSpec, add_progress_argument
from .textio import read_texts, write_embeddings

DEFAULT_EMBEDDER = "Qwen/Qwen3-Embedding-0.6B"
DEFAULT_RERANKER = "Qwen/Qwen3-Reranker-0.6B"
SUBCOMMAND_MODULES = (
    "embedforge.evaluation.cli",
    "embedforge.training.cli",
    "embedforge.synthesis.cli",
    "embedforge.server.cli",
    "embedforge.index.cli",
    "embedforge.export_cli",
    "embedforge.recipe.cli",
)


EMBEDDING_OUTPUTS = (".npy", ".parquet")  # what textio.write_embeddings writes


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail before any work when ``path`` cannot be written: a supported extension, not a
    directory, and a parent directory that exists writable or can be created."""
    out = Path(path)
    if out.suffix not in EMBEDDING_OUTPUTS:
        raise ValueError(f"unsupported output {str(out)!r}: use one of {', '.join(EMBEDDING_OUTPUTS)}")
    if out.is_dir():
        raise ValueError(f"output {str(out)!r} is a directory; give a file name")
    parent = out.absolute().parent
    while not parent.exists():  # the first existing ancestor decides whether it can be created
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"cannot create the output {str(out)!r}: {str(parent)!r} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the output {str(out)!r}: {str(parent)!r} is not writable")
    return out


def _cmd_embed(args: argparse.Namespace) -> int:
    spec = ModelSpec.required_from_args(args)  # validates the model options; loads nothing
    check_output_path(args.output)  # before reading, loading or encoding anything
    engine = EngineOptions.from_args(args)
    if engine.is_ray:
        from .scaleout.cli import embed_on_ray

        return embed_on_ray(args, spec, engine)
    texts, ids = read_texts(args.input, args.field)
    emb = spec.load_embedder()
    show = not args.no_progress
    if args.queries:
        vecs = emb.encode_queries(texts, instruction=args.instruction, dim=args.dim, show_progress=show)
    else:
        if args.instruction is not None:
            raise SystemExit(
                "--instruction applies to queries only: add --queries (documents take no instruction)"
            )
        vecs = emb.encode_documents(texts, dim=args.dim, show_progress=show)
    write_embeddings(args.output, np.asarray(vecs), ids)
    print(f"wrote {vecs.shape[0]} x {vecs.shape[1]} embeddings to {args.output}", file=sys.stderr)
    return 0


def _cmd_rerank(args: argparse.Namespace) -> int:
    spec = ModelSpec.required_from_args(args)
    docs, ids = read_texts(args.documents, args.field)
    rr = spec.load_reranker()
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
    ModelSpec.add_arguments(p, default_model=DEFAULT_EMBEDDER)
    add_engine_arguments(p, part_rows=True)
    add_progress_argument(p)
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("rerank", help="rank a file of documents against a query; JSONL out")
    p.add_argument("query", help="the query text")
    p.add_argument("documents", help="documents file: .txt (one per line), .jsonl or .parquet")
    p.add_argument("-o", "--output", default=None, help="output JSONL (default: stdout)")
    p.add_argument("--field", default=None, help="text field of JSONL/parquet rows")
    p.add_argument("--instruction", default=None, help="task instruction (default: web search)")
    p.add_argument("--top-k", type=int, default=None, help="keep the best K documents")
    ModelSpec.add_arguments(p, default_model=DEFAULT_RERANKER)
    add_progress_argument(p)
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
