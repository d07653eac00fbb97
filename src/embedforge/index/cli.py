"""``embedforge index build|add|delete|info|optimize`` and ``embedforge search``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedforge.scaleout.cluster import EngineOptions, add_engine_arguments
from embedforge.spec import ModelSpec, add_progress_argument

from .maintenance import ANN_CHOICES
from .quantize import QUANTIZATIONS


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _open(args: argparse.Namespace):
    from .index import Index

    return Index.open(
        args.dir,
        device=getattr(args, "device", None),
        threads=getattr(args, "threads", None),
        batch_tokens=getattr(args, "batch_tokens", None),
    )


def _cmd_build(args: argparse.Namespace) -> int:
    from .index import Index

    spec = ModelSpec.required_from_args(args)
    with _encoder(args, spec) as embedder:
        index = Index.build(
            args.corpus,
            args.index,
            embedder,
            dim=args.dim,
            field=args.field,
            id_field=args.id_field,
            batch_size=args.batch_size,
            show_progress=not args.no_progress,
            overwrite=args.overwrite,
        )
        engine = _engine_summary(embedder)
    assert index.last_write is not None
    _print_json({"build": index.last_write.to_dict(), "info": index.info(), **engine})
    return 0


def _engine_summary(encoder: Any) -> dict[str, Any]:
    """``{"engine": {...}}``: what each Ray actor embedded (documents/s, restarts); ``{}`` locally."""
    summary = getattr(encoder, "summary", None)
    return {"engine": summary()} if callable(summary) else {}


@contextlib.contextmanager
def _encoder(args: argparse.Namespace, spec: ModelSpec) -> Iterator[Any]:
    """The spec itself (``--engine local``), or an encoder spread over Ray actors (``--engine ray``)."""
    engine = EngineOptions.from_args(args)
    if not engine.is_ray:
        yield spec
        return
    from embedforge.scaleout import ray_cluster
    from embedforge.scaleout.encoder import RayEmbedder

    with ray_cluster(engine):
        encoder = RayEmbedder(spec, actors=engine.actors, threads_per_actor=engine.threads_per_actor)
        try:
            yield encoder
        finally:
            encoder.shutdown()


def _cmd_add(args: argparse.Namespace) -> int:
    from .index import Index
    from .manifest import read_manifest

    engine = EngineOptions.from_args(args)
    if not engine.is_ray:
        index = _open(args)
        report = index.add(
            args.corpus, field=args.field, id_field=args.id_field, show_progress=not args.no_progress
        )
        _print_json(report.to_dict())
        return 0
    overrides = {
        k: v for k, v in (("device", args.device), ("batch_tokens", args.batch_tokens)) if v is not None
    }
    spec = ModelSpec.from_dict(read_manifest(args.dir).spec).replace(**overrides)  # the model that built it
    with _encoder(args, spec) as encoder:
        report = Index.open(args.dir, embedder=encoder).add(
            args.corpus, field=args.field, id_field=args.id_field, show_progress=not args.no_progress
        )
        ray_summary = _engine_summary(encoder)
    _print_json({**report.to_dict(), **ray_summary})
    return 0


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"ids file {str(path)!r} does not exist")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"ids file {str(path)!r} holds no ids (one id per line)")
    return ids


def _cmd_delete(args: argparse.Namespace) -> int:
    index = _open(args)
    _print_json(index.delete(_read_ids(args.ids)))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info = _open(args).info()
    if args.json:
        _print_json(info)
        return 0
    for key, value in info.items():
        print(f"{key:>18}: {value}")
    return 0


def _cmd_optimize(args: argparse.Namespace) -> int:
    out = _open(args).optimize(
        ann=args.ann,
        quantize=args.quantize,
        num_partitions=args.num_partitions,
        num_sub_vectors=args.num_sub_vectors,
    )
    _print_json(out)
    return 0


def _read_queries(path: Path) -> tuple[list[str], list[str]]:
    from embedforge.corpus import read_documents

    docs = read_documents(path)
    if not docs:
        raise ValueError(f"queries file {str(path)!r} holds no queries")
    return [d.id for d in docs], [d.full_text for d in docs]


def _print_metrics(qrels_path: Path, qids: list[str], found: list, to: Any) -> None:
    """nDCG@10, Recall@100, MRR@10 (percent) of a run against a BEIR qrels file."""
    from embedforge.evaluation.data import read_qrels
    from embedforge.evaluation.metrics import retrieval_scores

    from .evaluate import run_of

    if not qrels_path.is_file():
        raise FileNotFoundError(f"qrels file {str(qrels_path)!r} does not exist")
    scores = retrieval_scores(
        read_qrels(qrels_path), run_of(qids, found), ["ndcg@10", "recall@100", "mrr@10"]
    )
    out = {k: round(100 * v, 2) for k, v in scores.mean.items()}
    print(json.dumps({"queries_judged": scores.n_queries, **out}), file=to)


def _cmd_search(args: argparse.Namespace) -> int:
    from .evaluate import write_trec_run

    if (args.query is None) == (args.queries is None):
        raise ValueError("give either a query text or --queries FILE (not both)")
    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    if args.qrels is not None and (args.queries is None or args.json):
        raise ValueError("--qrels scores a TREC run: use it with --queries (and without --json)")
    index = _open(args)
    reranker = None
    spec = ModelSpec.from_args(args, "reranker-", inherit=("device", "threads"))
    if spec is not None:
        reranker = spec.load_reranker()
    qids, texts = (["query"], [args.query]) if args.query is not None else _read_queries(args.queries)
    found = index.search(
        texts,
        args.k,
        instruction=args.instruction,
        where=args.where,
        rerank=reranker,
        rerank_top=args.rerank_top,
        mode=args.mode,
        rescore_multiplier=args.rescore_multiplier,
        nprobes=args.nprobes,
        refine_factor=args.refine_factor,
        payload=args.queries is None or args.json,
    )
    if args.queries is not None and not args.json:
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
        try:
            n = write_trec_run(out, qids, found, args.tag)
        finally:
            if out is not sys.stdout:
                out.close()
        if args.output:
            print(f"wrote {n} lines for {len(qids)} queries to {args.output}", file=sys.stderr)
        if args.qrels is not None:
            _print_metrics(args.qrels, qids, found, to=sys.stdout if args.output else sys.stderr)
        return 0
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for qid, hits in zip(qids, found, strict=True):
            if args.json:
                for h in hits:
                    out.write(
                        json.dumps({"query_id": qid, **h.to_dict()}, ensure_ascii=False, default=str) + "\n"
                    )
                continue
            for h in hits:
                rr = f"  rerank {h.rerank_score:.4f}" if h.rerank_score is not None else ""
                text = (h.title + ": " if h.title else "") + h.text
                out.write(f"{h.rank:>3}  {h.score:.4f}{rr}  {h.id}  {text[:100]!r}\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``index`` (build, add, delete, info, optimize) and ``search``."""
    idx = subparsers.add_parser(
        "index", help="embed a corpus into an on-disk vector index and keep it current"
    )
    sub = idx.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    b = sub.add_parser("build", help="embed CORPUS into a new index (resumes an interrupted build)")
    b.add_argument("corpus", type=Path, help="BEIR corpus.jsonl, JSONL, TXT, Parquet or CSV")
    b.add_argument("--index", type=Path, required=True, metavar="DIR", help="index directory to create")
    b.add_argument("--dim", type=int, default=None, help="Matryoshka dimension to store (default: full)")
    b.add_argument("--field", default=None, help="text field of the records (default: text, ...)")
    b.add_argument("--id-field", default=None, help="id field of the records (default: _id, id, ...)")
    b.add_argument(
        "--batch-size", type=int, default=4096, help="documents per committed batch (default 4096)"
    )
    b.add_argument("--overwrite", action="store_true", help="replace an existing index or unfinished build")
    ModelSpec.add_arguments(b)
    add_engine_arguments(b)
    add_progress_argument(b)
    b.set_defaults(func=_cmd_build)

    def runtime_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("runtime (the model itself comes from the index)")
        g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        g.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
        g.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per batch")

    a = sub.add_parser("add", help="upsert the documents of CORPUS by id")
    a.add_argument("dir", type=Path, metavar="DIR")
    a.add_argument("corpus", type=Path)
    a.add_argument("--field", default=None, help="text field (default: the one the index was built with)")
    a.add_argument("--id-field", default=None, help="id field (default: the one the index was built with)")
    runtime_options(a)
    add_engine_arguments(a)
    add_progress_argument(a)
    a.set_defaults(func=_cmd_add)

    d = sub.add_parser("delete", help="remove documents by id")
    d.add_argument("dir", type=Path, metavar="DIR")
    d.add_argument("--ids", type=Path, required=True, metavar="FILE", help="one id per line")
    d.set_defaults(func=_cmd_delete)

    i = sub.add_parser("info", help="rows, model, dimensions, size on disk, ANN state")
    i.add_argument("dir", type=Path, metavar="DIR")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=_cmd_info)

    o = sub.add_parser("optimize", help="compact; build an ANN index; set quantised search")
    o.add_argument("dir", type=Path, metavar="DIR")
    o.add_argument(
        "--ann", choices=ANN_CHOICES, default=None, help="LanceDB vector index to build (none: drop)"
    )
    o.add_argument(
        "--quantize",
        choices=(*QUANTIZATIONS, "none"),
        default=None,
        help="search compact codes, then rescore",
    )
    o.add_argument("--num-partitions", type=int, default=None, help="IVF partitions (default: LanceDB's)")
    o.add_argument("--num-sub-vectors", type=int, default=None, help="PQ sub-vectors (default: LanceDB's)")
    o.set_defaults(func=_cmd_optimize)

    s = subparsers.add_parser("search", help="search an index: one query, or a queries file into a TREC run")
    s.add_argument("dir", type=Path, metavar="DIR")
    s.add_argument("query", nargs="?", default=None, help="query text")
    s.add_argument(
        "--queries", type=Path, default=None, help="queries file (BEIR queries.jsonl, JSONL, TXT ...)"
    )
    s.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    s.add_argument("--instruction", default=None, help="query instruction (default: the model's)")
    s.add_argument("--where", default=None, help='SQL filter on metadata columns, e.g. "year > 2015"')
    s.add_argument("--mode", choices=("auto", "exact", "ann", "int8", "binary"), default="auto")
    s.add_argument(
        "--rescore-multiplier", type=int, default=4, help="quantised search: candidates = k x this"
    )
    s.add_argument("--nprobes", type=int, default=None, help="ANN: IVF partitions probed")
    s.add_argument("--refine-factor", type=int, default=None, help="ANN: rescore refine_factor x k exactly")
    s.add_argument(
        "--json", action="store_true", help="JSON lines: query_id, id, score, rank, text, metadata"
    )
    s.add_argument(
        "-o", "--output", default=None, help="write here instead of stdout (a TREC run with --queries)"
    )
    s.add_argument("--tag", default="embedforge", help="run tag of the TREC run (default embedforge)")
    s.add_argument(
        "--qrels",
        type=Path,
        default=None,
        help="with --queries: BEIR qrels TSV; print nDCG@10, Recall@100, MRR@10",
    )
    runtime_options(s)
    ModelSpec.add_arguments(s, "reranker-", model_help="reranker model scoring the top --rerank-top hits")
    s.add_argument("--rerank", dest="reranker", default=None, metavar="MODEL", help="same as --reranker")
    s.add_argument("--rerank-top", type=int, default=100, help="hits reranked per query (default 100)")
    s.set_defaults(func=_cmd_search)


def main(argv: list[str] | None = None) -> int:
    """Run the index commands alone (``python -m embedforge.index.cli index info DIR``)."""
    parser = argparse.ArgumentParser(prog="embedforge")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"embedforge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
