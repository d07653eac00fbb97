"""``embedforge train embedder|reranker CONFIG``, ``embedforge mine-negatives`` and ``embedforge merge``.

``python -m embedforge.training.cli ...`` runs the same commands (handy under ``torchrun -m``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from embedforge.spec import ModelSpec, add_progress_argument


def _cmd_train(args: argparse.Namespace) -> int:
    from embedforge.training.config import EmbedderTrainingConfig, RerankerTrainingConfig, load_config

    if args.kind == "embedder":
        from embedforge.training.embedder_trainer import train_embedder

        embedder_cfg = load_config(args.config, EmbedderTrainingConfig)
        overrides = {"resume": True} if args.resume else {}
        result = train_embedder(embedder_cfg.model_copy(update=overrides))
    else:
        from embedforge.training.reranker_trainer import train_reranker

        reranker_cfg = load_config(args.config, RerankerTrainingConfig)
        overrides = {"resume": True} if args.resume else {}
        result = train_reranker(reranker_cfg.model_copy(update=overrides))
    if result.losses:
        print(
            f"trained {args.kind} to step {result.steps}: final loss {result.losses[-1]:.4f}; model in {result.output_dir}",
            file=sys.stderr,
        )
    return 0


def _cmd_mine(args: argparse.Namespace) -> int:
    from embedforge.training.data import beir_train_records, write_jsonl
    from embedforge.training.mining import mine_hard_negatives

    records, corpus = beir_train_records(args.data, args.split, instruction=args.instruction)
    embedder = ModelSpec.required_from_args(args).load_embedder()
    mined = mine_hard_negatives(
        embedder,
        [r.model_dump() for r in records],
        corpus,
        k=args.k,
        skip_top=args.skip_top,
        instruction=args.instruction,
        show_progress=not args.no_progress,
    )
    n = write_jsonl(mined, args.out)
    short = sum(len(r["negatives"]) < args.k for r in mined)
    print(f"wrote {n} records to {args.out} ({short} with fewer than {args.k} negatives)", file=sys.stderr)
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from embedforge.merging import merge_checkpoints

    result = merge_checkpoints(
        args.checkpoints,
        args.out,
        method=args.method,
        t=args.t,
        weights=args.weights,
        show_progress=not args.no_progress,
    )
    print(
        f"{result.method.value}-merged {len(result.parents)} checkpoints ({result.n_tensors} tensors) into {result.output_dir}",
        file=sys.stderr,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``mine-negatives`` and ``merge`` to the ``embedforge`` command."""
    train = subparsers.add_parser("train", help="fine-tune an embedder or a reranker from a config file")
    kinds = train.add_subparsers(dest="kind", required=True)
    for kind, what in (("embedder", "improved InfoNCE (Qwen3 recipe)"), ("reranker", "yes/no SFT loss")):
        p = kinds.add_parser(kind, help=f"train a {kind} with the {what}")
        p.add_argument(
            "config",
            type=Path,
            help="YAML or JSON config (EmbedderTrainingConfig / RerankerTrainingConfig fields)",
        )
        p.add_argument(
            "--resume", action="store_true", help="continue from the latest checkpoint in output_dir"
        )
        p.set_defaults(func=_cmd_train)

    mine = subparsers.add_parser(
        "mine-negatives", help="BEIR train qrels -> JSONL records with hard negatives"
    )
    ModelSpec.add_arguments(mine, model_help="embedder used for mining: local directory or Hub id")
    mine.add_argument(
        "--data", required=True, type=Path, help="BEIR directory (corpus.jsonl, queries.jsonl, qrels/)"
    )
    mine.add_argument("--split", default="train", help="qrels split (default train)")
    mine.add_argument("--k", type=int, default=7, help="hard negatives per record (default 7)")
    mine.add_argument(
        "--skip-top", type=int, default=10, help="ranks skipped before taking negatives (default 10)"
    )
    mine.add_argument("--instruction", default=None, help="query instruction (default: the model's)")
    mine.add_argument("--out", required=True, type=Path, help="output JSONL")
    add_progress_argument(mine, quiet_alias=True)
    mine.set_defaults(func=_cmd_mine)

    merge = subparsers.add_parser("merge", help="merge checkpoints (slerp or linear), tensor by tensor")
    merge.add_argument(
        "checkpoints",
        nargs="+",
        type=Path,
        help="two or more model directories (or LoRA adapter directories)",
    )
    merge.add_argument("--method", choices=["slerp", "linear"], default="slerp")
    merge.add_argument(
        "--t",
        type=float,
        nargs="+",
        default=None,
        help="slerp factor(s): one per fold step, m_k = slerp(m_{k-1}, c_k, t_k); default t_k = 1/k",
    )
    merge.add_argument(
        "--weights",
        type=float,
        nargs="+",
        default=None,
        help="linear weights, one per checkpoint (default equal)",
    )
    merge.add_argument("--out", required=True, type=Path, help="output directory")
    add_progress_argument(merge, quiet_alias=True)
    merge.set_defaults(func=_cmd_merge)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embedforge", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
