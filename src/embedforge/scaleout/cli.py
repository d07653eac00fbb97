"""The ``--engine ray`` branch of the commands: ``embed`` here (the command's own module dispatches)."""

from __future__ import annotations

import argparse
import json
import sys

from embedforge.spec import ModelSpec

from .cluster import EngineOptions
from .embed_job import EmbedJobConfig, run_embed_job


def embed_on_ray(args: argparse.Namespace, spec: ModelSpec, engine: EngineOptions) -> int:
    """``embedforge embed ... --engine ray``: the same output as ``--engine local``, resumable; the
    job's JSON summary goes to stderr."""
    if not args.queries and args.instruction is not None:
        raise SystemExit(
            "--instruction applies to queries only: add --queries (documents take no instruction)"
        )
    config = EmbedJobConfig(
        spec,
        side="query" if args.queries else "document",
        instruction=args.instruction,
        dim=args.dim,
        field=args.field,
        part_rows=args.part_rows,
        show_progress=not args.no_progress,
    )
    summary = run_embed_job(args.input, args.output, config, engine)
    print(json.dumps(summary.to_dict(), indent=2), file=sys.stderr)
    print(
        f"wrote {summary.documents} x {summary.dim} embeddings to {args.output} "
        f"({summary.parts_skipped} of {summary.parts_total} parts were already committed)",
        file=sys.stderr,
    )
    return 0
