"""``embedforge export MODEL --backend torch-int8|onnx|onnx-int8 --out DIR``: write a directory for a backend.

The directory loads directly: ``Embedder.from_pretrained(DIR, backend="onnx")``, or
``--model DIR --backend onnx`` in every command and the server.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .export import DEFAULT_CALIBRATION, EXPORT_BACKENDS


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export, read_calibration_texts

    if args.calibration_size < 1:
        raise ValueError(f"--calibration-size must be a positive integer, got {args.calibration_size}")
    if args.calibration and not args.backend.endswith("int8"):
        raise ValueError(f"--calibration applies to the int8 backends, not --backend {args.backend}")
    texts = None
    source = ""
    if args.calibration:
        texts = read_calibration_texts(args.calibration, args.calibration_size)
        source = f"{args.calibration} (first {len(texts)} documents)"
    load: dict[str, Any] = {
        "revision": args.revision,
        "allow_pickle": args.allow_pickle,
        "trust_remote_code": args.trust_remote_code,
    }
    if args.max_length:
        load["max_length"] = args.max_length
    manifest = export(
        args.model,
        args.backend,
        args.out,
        kind=args.kind,
        calibration_texts=texts,
        calibration_source=source,
        **load,
    )
    summary: dict[str, Any] = {"out": args.out, "backend": manifest.backend, "kind": manifest.kind}
    if manifest.onnx:
        graph = manifest.onnx["graph"]
        summary["onnx"] = {k: graph.get(k) for k in ("output", "pooling", "opset", "files", "last_position")}
    if manifest.backend == "torch-int8":
        summary["quantized_linears"] = manifest.int8.get("quantized_linears")
        summary["keep_fp32"] = manifest.int8.get("keep_fp32")
    if manifest.calibration:
        keys = ("texts", "source", "metric", "target", "reached")
        summary["calibration"] = {k: manifest.calibration.get(k) for k in keys if k in manifest.calibration}
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: Any) -> None:
    """Add ``export`` to the ``embedforge`` command."""
    p = subparsers.add_parser(
        "export",
        help="write a model directory for a faster backend (int8, ONNX)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("model", help="local directory or Hub id of the fp32 model")
    p.add_argument("--backend", required=True, choices=EXPORT_BACKENDS, help="backend to export for")
    p.add_argument("--out", required=True, help="new (or empty) directory to write")
    p.add_argument(
        "--kind", choices=("embedder", "reranker"), default="embedder", help="model kind (default embedder)"
    )
    p.add_argument(
        "--calibration",
        default=None,
        help="corpus file of real texts to calibrate the int8 backends on (JSONL, BEIR, TXT, Parquet, "
        "CSV); default: embedforge's built-in texts",
    )
    p.add_argument(
        "--calibration-size",
        type=int,
        default=DEFAULT_CALIBRATION,
        help=f"texts used (default {DEFAULT_CALIBRATION})",
    )
    p.add_argument(
        "--max-length", type=int, default=None, help="tokens per input (embedder; default the checkpoint's)"
    )
    p.add_argument("--revision", default=None, help="Hub revision of a Hub id")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights")
    p.add_argument("--trust-remote-code", action="store_true", help="run the checkpoint's own Python code")
    p.set_defaults(func=_cmd_export)


__all__ = ["register"]
