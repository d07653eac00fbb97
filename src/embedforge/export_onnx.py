"""The ONNX half of :mod:`embedforge.export`: write a model's graph (``onnx``, ``onnx-int8``), load
one back onto a model, and export a checkpoint as a directory holding the graph instead of weights.

The graph itself comes from :mod:`embedforge.runtime.onnx` (``export_graph``, ``OnnxRuntime``);
``onnx-int8`` calibrates on texts tokenized by the library (documents for an embedder,
query-document pairs through the reranker template for a reranker) and quantizes with
:func:`embedforge.runtime.onnx_quant.quantize_onnx`, whose report goes into the manifest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .export import (
    EMBEDDER_TARGET,
    RERANKER_TARGET,
    ExportManifest,
    builtin_calibration_texts,
    calibration_pairs,
    calibration_sha256,
    embedforge_version,
    is_reranker,
)

if TYPE_CHECKING:
    from .embedder import Embedder
    from .reranker import Reranker


def calibration_feeds(model: Embedder | Reranker, texts: list[str]) -> list[dict[str, Any]]:
    """ONNX feeds (``input_ids``, ``attention_mask``: int64 arrays) of ``texts`` tokenized,
    batched and padded by the library itself: documents for an embedder, query-document pairs
    through the reranker template for a reranker."""
    from .batching import plan_batches

    wrapper: Any = model
    if is_reranker(model):
        ids = wrapper.tokenize_pairs(calibration_pairs(texts))
    else:
        ids = wrapper.tokenize(texts, prompt=wrapper.side_prompt("document"))
    plan = plan_batches([len(x) for x in ids], model.batch_tokens)
    batches = (wrapper.collate([ids[i] for i in batch]) for batch in plan.batches)
    return [{name: t.cpu().numpy() for name, t in batch.items()} for batch in batches]


def _agreement(model: Embedder | Reranker, runtime: Any) -> tuple[Any, float, str]:
    """``(agreement(fp32_outputs, int8_outputs), target, metric)`` on the graph's outputs, the
    same measures as torch-int8: min cosine of embeddings, 1 - max |yes/no score difference|."""
    from .runtime.int8 import min_cosine, score_agreement

    def stack(outputs: list[Any]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([np.asarray(o, dtype=np.float32) for o in outputs]))

    if is_reranker(model):
        rr: Any = model

        def scores(outputs: list[Any]) -> torch.Tensor:
            return rr.scores_from_logits(runtime.head_logits(stack(outputs), (rr.no_id, rr.yes_id)))

        def agree_scores(ref: list[Any], out: list[Any]) -> float:
            return score_agreement(scores(ref), scores(out))

        return agree_scores, RERANKER_TARGET, "1 - max |score - fp32 score|"

    def agree_cosine(ref: list[Any], out: list[Any]) -> float:
        return min_cosine(stack(ref), stack(out))

    return agree_cosine, EMBEDDER_TARGET, "min cosine vs fp32"


def write_onnx(
    model: Embedder | Reranker, out: Path, backend: str, texts: list[str], source: str
) -> dict[str, Any]:
    """Write ``model``'s graph for ``backend`` into ``out``; return the manifest entries
    (``onnx``, and for ``onnx-int8`` ``int8`` and ``calibration``)."""
    from .runtime.onnx import GRAPH_FILE, OnnxRuntime, export_graph, graph_sha256, save_head_rows

    wrapper: Any = model
    module: Any = model.model.to("cpu", torch.float32)  # the graph is fp32 whatever the checkpoint's dtype
    reranker = is_reranker(model)
    kind = "reranker" if reranker else "embedder"
    heads = {}
    if reranker:
        weight = module.get_output_embeddings().weight  # (vocab, hidden)
        heads = {t: weight[t].detach().clone() for t in (wrapper.no_id, wrapper.yes_id)}
    causal = getattr(model, "is_decoder", True)
    pooling = None if reranker else wrapper.pooling
    record: dict[str, Any] = {}
    if backend == "onnx":
        info = export_graph(module, out, kind=kind, pooling=pooling, causal=causal)
    else:
        from .runtime.onnx import require_onnx

        require_onnx("onnx", "onnxruntime")
        try:
            from .runtime.onnx_quant import quantize_onnx
        except ImportError as exc:
            raise NotImplementedError(f"the onnx-int8 quantizer is not available yet ({exc})") from None
        if not texts:
            raise ValueError("calibration needs at least one text")
        with tempfile.TemporaryDirectory(prefix="embedforge-fp32-") as tmp:
            info = export_graph(module, Path(tmp), kind=kind, pooling=pooling, causal=causal)
            fp32 = OnnxRuntime(Path(tmp) / GRAPH_FILE, info, head=heads)
            agreement, target, metric = _agreement(model, fp32)
            feeds = calibration_feeds(model, texts)
            del fp32
            report = quantize_onnx(
                Path(tmp) / GRAPH_FILE, out / GRAPH_FILE, feeds, agreement=agreement, target=target
            )
        files = tuple(sorted(p.name for p in out.iterdir() if p.name.startswith(GRAPH_FILE)))
        info = type(info)(**{**info.to_dict(), "files": files})
        record["int8"] = dict(report)
        reached = report.get("agreement")
        record["calibration"] = {
            "texts": len(texts),
            "feeds": len(feeds),
            "source": source,
            "sha256": calibration_sha256(texts),
            "metric": metric,
            "target": target,
            "reached": reached,
        }
        if isinstance(reached, float) and reached < target:
            warnings.warn(
                f"onnx-int8 calibration reached {reached:.4f} against fp32 on the calibration texts, below "
                f"the target {target}; this model loses quality in int8: prefer backend='onnx'",
                stacklevel=3,
            )
    if heads:
        save_head_rows(out, heads)
    record["onnx"] = {
        "graph": info.to_dict(),
        "sha256": graph_sha256(out, info.files),
        "head_tokens": sorted(heads),
    }
    return record


def apply_onnx(model: Embedder | Reranker, backend: str, manifest: ExportManifest | None) -> None:
    """Finish loading ``model`` on an ONNX backend: its export's runtime, already in place, or
    a graph exported now from the fp32 checkpoint into a temporary directory."""
    from .runtime.onnx import GRAPH_FILE, GraphInfo, OnnxRuntime, load_head_rows

    if manifest is None:  # a plain checkpoint: export on the fly
        tmp = tempfile.TemporaryDirectory(prefix="embedforge-onnx-")
        out = Path(tmp.name)
        record = write_onnx(
            model, out, backend, builtin_calibration_texts(), "embedforge built-in texts (personas)"
        )
        info = GraphInfo.from_dict(record["onnx"]["graph"])
        runtime = OnnxRuntime(out / GRAPH_FILE, info, head=load_head_rows(out), backend=backend)
        runtime.record = record  # type: ignore[attr-defined]
        runtime.tempdir = tmp  # type: ignore[attr-defined]  # the graph's files live as long as the runtime
        model.runtime = runtime
        sha = record["onnx"]["sha256"]
    else:
        runtime = model.runtime  # type: ignore[assignment]
        if not isinstance(runtime, OnnxRuntime):
            raise TypeError(f"an {backend} export loads into OnnxRuntime, not {runtime!r}")
        runtime.record = {k: getattr(manifest, k) for k in ("onnx", "int8", "calibration")}  # type: ignore[attr-defined]
        sha = manifest.onnx["sha256"]
    pooling = getattr(model, "pooling", None)
    if pooling is not None and pooling != runtime.info.pooling:
        raise ValueError(
            f"the ONNX graph pools with {runtime.info.pooling!r}, not {pooling!r}: load it without pooling=, "
            "or export a model loaded with that pooling"
        )
    # an ONNX graph's outputs are not bit-identical to torch (int8 far from it): caches keyed by
    # the fingerprint must not mix them
    digest = hashlib.sha256(f"{model.fingerprint}|{backend}|{sha}".encode())
    model.fingerprint = digest.hexdigest()[: len(model.fingerprint) or 16]


def export_onnx(
    model: Any, source_name: str, backend: str, target: Path, kind: str, texts: list[str], source: str
) -> ExportManifest:
    """The ONNX half of :func:`export`: checkpoint files without weights, the graph, the manifest."""
    from .runtime.onnx import export_support

    reason = export_support(model.model)
    if reason is not None:  # before writing anything
        raise ValueError(f"cannot export {source_name!r} to ONNX: {reason}")
    target.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(target)  # config, tokenizer, sentence-transformers files ...
        for name in os.listdir(target):  # ... but the weights live in the graph
            if name.endswith(".safetensors") or name == "model.safetensors.index.json":
                (target / name).unlink()
        record = write_onnx(model, target, backend, texts, source)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # no half-written export left behind
        raise
    manifest = ExportManifest(
        backend=backend,
        kind=kind,
        embedforge_version=embedforge_version(),
        source=str(source_name),
        int8=record.get("int8", {}),
        calibration=record.get("calibration", {}),
        onnx=record["onnx"],
    )
    manifest.write(target)
    return manifest


__all__ = ["apply_onnx", "calibration_feeds", "export_onnx", "write_onnx"]
