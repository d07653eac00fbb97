"""Backends beyond plain torch: convert a loaded model, export it to a directory, load it back.

``export(model, backend, out)`` writes a directory that ``Embedder.from_pretrained(out,
backend=...)`` (or ``Reranker``) loads directly: the checkpoint's own files (fp32 safetensors,
tokenizer, sentence-transformers files), plus what the backend needs and a manifest,
``embedforge_backend.json``, recording the backend, the embedforge version, and for int8 the
calibration texts (count, source, sha256), the settings and the agreement reached.

``onnx`` and ``onnx-int8`` (:mod:`embedforge.export_onnx`, graphs from :mod:`embedforge.runtime.onnx`)
write our own ONNX graph instead of the torch weights: ``model.onnx`` (weights inside, or beside it
past 1 GiB), for a reranker the LM-head rows of ``no``/``yes`` (``lm_head_rows.safetensors``), and
in the manifest what the graph computes (inputs, output, pooling, opset) and its sha256. ``onnx-int8`` calibrates on texts
tokenized by the library itself (documents for an embedder, query-document pairs through the
reranker template for a reranker) and quantizes the graph with
:func:`embedforge.runtime.onnx_quant.quantize_onnx`, whose report goes into the manifest.
``from_pretrained(checkpoint, backend="onnx")`` on a plain checkpoint exports on the fly into a
temporary directory that lives as long as the runtime (``onnx-int8``: calibrated on the built-in
texts); run ``embedforge export`` once to skip that work at every load.

``torch-int8`` (:mod:`embedforge.runtime.int8`) stores its plan in ``int8_plan.safetensors``: one
SmoothQuant scale vector per quantized linear (metadata: alpha and the linears kept in fp32).
Loading applies the plan to the fp32 weights (quantization itself is deterministic and takes
a second), so the weights on disk stay safetensors that any tool can read. Without an export,
``from_pretrained(..., backend="torch-int8")`` calibrates at load time on embedforge's built-in
calibration texts.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .embedder import Embedder
    from .reranker import Reranker
    from .runtime import Runtime

MANIFEST = "embedforge_backend.json"
INT8_PLAN = "int8_plan.safetensors"
FORMAT = 1
EXPORT_BACKENDS: tuple[str, ...] = ("torch-int8", "onnx", "onnx-int8")
ONNX_BACKENDS: tuple[str, ...] = ("onnx", "onnx-int8")  # as embedforge.runtime.onnx.ONNX_BACKENDS
EMBEDDER_TARGET = 0.997  # min cosine vs fp32 on the calibration texts that calibration aims for
RERANKER_TARGET = 0.99  # 1 - max |score difference| vs fp32 on the calibration pairs
DEFAULT_CALIBRATION = 64  # calibration texts used when none are given


def embedforge_version() -> str:
    from . import __version__  # not at import time: embedforge/__init__ imports the embedder first

    return __version__


class ExportError(ValueError):
    """An export directory that cannot be loaded as asked (other backend, other version ...)."""


@dataclass(frozen=True)
class ExportManifest:
    """Contents of ``embedforge_backend.json``."""

    backend: str
    kind: str  # "embedder" or "reranker"
    embedforge_version: str
    source: str
    format: int = FORMAT
    int8: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    onnx: dict[str, Any] = field(default_factory=dict)  # graph (GraphInfo), sha256, head_tokens

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


def read_manifest(directory: str | Path) -> ExportManifest | None:
    """The manifest of an export directory, or ``None`` for a plain checkpoint."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ExportManifest(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ExportError(f"{path}: not a valid embedforge export manifest ({exc})") from None


def check_export(directory: str | Path, backend: str, kind: str) -> ExportManifest | None:
    """Refuse to load an export as another backend, kind or embedforge version."""
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    where = Path(directory) / MANIFEST
    version = embedforge_version()
    if manifest.format != FORMAT or manifest.embedforge_version != version:
        raise ExportError(
            f"{where}: exported by embedforge {manifest.embedforge_version} (format {manifest.format}); "
            f"this is embedforge {version} (format {FORMAT}): export it again with "
            f"`embedforge export {manifest.source} --backend {manifest.backend} --out DIR`"
        )
    if manifest.backend != backend:
        raise ExportError(
            f"{where}: this directory was exported for backend {manifest.backend!r}, not {backend!r}; "
            f"load it with backend={manifest.backend!r} (--backend {manifest.backend}) or load the "
            f"original checkpoint {manifest.source!r}"
        )
    if manifest.kind != kind:
        raise ExportError(f"{where}: this is an exported {manifest.kind}, not a {kind}")
    if manifest.backend in ONNX_BACKENDS:
        from .runtime.onnx import GRAPH_FILE, HEAD_ROWS_FILE

        files = list(manifest.onnx.get("graph", {}).get("files") or [GRAPH_FILE])
        files += [HEAD_ROWS_FILE] if kind == "reranker" else []
        missing = [f for f in files if not (Path(directory) / f).is_file()]
        if missing or "sha256" not in manifest.onnx:
            raise ExportError(
                f"{where}: the export is incomplete ({missing or 'no graph record'}); export it again"
            )
    return manifest


def export_runtime(
    directory: Path,
    manifest: ExportManifest | None,
    backend: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Runtime | None:
    """The runtime of an export that holds a graph instead of torch weights (``onnx``,
    ``onnx-int8``); ``None`` when the caller loads the checkpoint's torch module as usual.

    The ONNX backends run on CPU in float32: another ``device`` or ``dtype`` is refused.
    """
    if backend not in ONNX_BACKENDS:
        return None
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(
            f"backend {backend!r} runs on CPU (ONNX Runtime's CPU provider), not device={device!r}"
        )
    if dtype is not None and dtype not in ("auto", "float32", "fp32", "float", torch.float32):
        raise ValueError(f"backend {backend!r} runs in float32, not dtype={dtype!r}")
    if manifest is None:
        return None  # a plain checkpoint: apply_backend exports it on the fly
    from .runtime.onnx import GRAPH_FILE, GraphInfo, OnnxRuntime, load_head_rows

    info = GraphInfo.from_dict(manifest.onnx["graph"])
    return OnnxRuntime(directory / GRAPH_FILE, info, head=load_head_rows(directory), backend=backend)


# ---------------------------------------------------------------------------- calibration texts
def builtin_calibration_texts(n: int = DEFAULT_CALIBRATION, per_text: int = 12) -> list[str]:
    """``n`` English passages made of ``per_text`` persona descriptions shipped with embedforge
    (``data/personas.jsonl``), cycled when ``n * per_text`` exceeds them.

    Passages, not single lines: the activation ranges SmoothQuant measures depend on sequence
    length, and one-line texts calibrate badly for documents (all-MiniLM-L6-v2 on SciFact: min
    cosine 0.90 against fp32 calibrated on single personas, 0.994 on 12-persona passages, 0.997
    on SciFact documents). Calibrate on your own corpus (``--calibration``) where you can.
    """
    lines = resources.files("embedforge").joinpath("data/personas.jsonl").read_text(encoding="utf-8")
    personas = [json.loads(line)["persona"] for line in lines.splitlines() if line.strip()]
    return [
        ". ".join(personas[(i * per_text + j) % len(personas)] for j in range(per_text)).capitalize() + "."
        for i in range(n)
    ]


def read_calibration_texts(path: str | Path, n: int = DEFAULT_CALIBRATION) -> list[str]:
    """The first ``n`` documents of a corpus file (any format :mod:`embedforge.corpus` reads)."""
    from .corpus import iter_documents

    texts = []
    for doc in iter_documents(path):
        if doc.full_text.strip():
            texts.append(doc.full_text)
        if len(texts) == n:
            break
    if not texts:
        raise ValueError(f"{path}: no non-empty documents to calibrate on")
    return texts


def calibration_sha256(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8") + b"\0")
    return digest.hexdigest()


def calibration_pairs(texts: list[str]) -> list[tuple[str, str]]:
    """Relevant-looking (a text with itself) and unrelated (with its neighbour) pairs."""
    n = len(texts)
    return [(t, t) for t in texts[: n // 2]] + [(texts[i], texts[(i + 1) % n]) for i in range(n // 2, n)]


def is_reranker(model: Any) -> bool:
    from .reranker import Reranker

    return isinstance(model, Reranker)


# ---------------------------------------------------------------------------- int8


def quantize_int8(
    model: Embedder | Reranker,
    texts: list[str],
    *,
    source: str = "texts given",
    target: float | None = None,
    alphas: tuple[float | None, ...] | None = None,
) -> dict[str, Any]:
    """Calibrate on ``texts`` and switch ``model`` to the ``torch-int8`` runtime, in place.

    Returns the calibration record (the manifest's ``int8`` and ``calibration`` entries) and
    keeps the plan in ``model.runtime.plan`` for :func:`export`.
    """
    from .runtime.int8 import Int8Runtime, apply_plan, calibrate, min_cosine, score_agreement
    from .runtime.torch import TorchRuntime

    if type(model.runtime) is not TorchRuntime:
        raise ValueError(f"int8 conversion starts from the fp32 torch runtime, not {model.runtime!r}")
    if not texts:
        raise ValueError("calibration needs at least one text")
    module = model.model
    wrapper: Any = model
    if is_reranker(model):
        pairs = calibration_pairs(texts)

        def run() -> torch.Tensor:
            return torch.from_numpy(wrapper.score_pairs(pairs))

        agreement, goal = score_agreement, RERANKER_TARGET
    else:

        def run() -> torch.Tensor:
            return wrapper.encode(texts, convert_to="torch")

        agreement, goal = min_cosine, EMBEDDER_TARGET
    kwargs: dict[str, Any] = {} if alphas is None else {"alphas": alphas}
    result = calibrate(module, run, agreement, target=goal if target is None else target, **kwargs)
    goal = goal if target is None else target
    if result.quality < goal:
        warnings.warn(
            f"int8 calibration reached {result.quality:.4f} against fp32 on the calibration texts, below the "
            f"target {goal}; this model loses quality in int8 (decoders with massive activations need "
            "per-token activation scales, which torch-int8 does not have yet): prefer backend='torch'",
            stacklevel=2,
        )
    apply_plan(module, result.plan)
    causal = getattr(model, "is_decoder", True)
    runtime = Int8Runtime(module, causal=causal)
    runtime.plan = result.plan  # type: ignore[attr-defined]
    model.runtime = runtime
    record = {
        "int8": {
            "method": "SmoothQuant + dynamic int8 (torch fbgemm)",
            "weights": "int8, symmetric, one scale per output channel",
            "activations": "uint8 (7-bit range), one scale per call, computed at run time",
            "alphas": {n: a for n, a in result.plan.alphas.items()},
            "quantized_linears": len(result.plan.scales),
            "keep_fp32": list(result.plan.keep_fp32),
            "last_position_decoding": runtime.tail is not None,
        },
        "calibration": {
            "texts": len(texts),
            "source": source,
            "sha256": calibration_sha256(texts),
            "metric": "1 - max |score - fp32 score|" if is_reranker(model) else "min cosine vs fp32",
            "target": goal,
            "reached": result.quality,
            "trials": result.trials,
        },
    }
    runtime.record = record  # type: ignore[attr-defined]
    return record


def _save_plan(plan: Any, out: Path) -> None:
    from safetensors.torch import save_file

    meta = {"alphas": json.dumps(plan.alphas), "keep_fp32": json.dumps(list(plan.keep_fp32))}
    save_file({n: s.contiguous() for n, s in plan.scales.items()}, str(out / INT8_PLAN), metadata=meta)


def load_int8_plan(directory: Path) -> Any:
    """The :class:`~embedforge.runtime.int8.Int8Plan` stored in an export directory."""
    from safetensors import safe_open

    from .runtime.int8 import Int8Plan

    path = directory / INT8_PLAN
    if not path.is_file():
        raise ExportError(f"{path} is missing: the export is incomplete; export it again")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        scales = {name: f.get_tensor(name) for name in f.keys()}
    alphas = json.loads(meta.get("alphas", "{}"))
    return Int8Plan(scales, alphas, tuple(json.loads(meta.get("keep_fp32", "[]"))))


def apply_backend(
    model: Embedder | Reranker, directory: Path, backend: str, manifest: ExportManifest | None
) -> None:
    """Switch a freshly loaded fp32 model to ``backend`` (``from_pretrained`` calls this)."""
    from .runtime.int8 import Int8Runtime, apply_plan

    if backend == "torch":
        return
    if backend in ONNX_BACKENDS:
        from .export_onnx import apply_onnx

        apply_onnx(model, backend, manifest)
        return
    if backend != "torch-int8":
        raise ValueError(f"backend {backend!r} is not one of {['torch', *EXPORT_BACKENDS]}")
    if manifest is None:
        quantize_int8(model, builtin_calibration_texts(), source="embedforge built-in texts (personas)")
    else:
        plan = load_int8_plan(directory)
        apply_plan(model.model, plan)
        runtime = Int8Runtime(model.model, causal=getattr(model, "is_decoder", True))
        runtime.plan = plan  # type: ignore[attr-defined]
        runtime.record = {"int8": manifest.int8, "calibration": manifest.calibration}  # type: ignore[attr-defined]
        model.runtime = runtime
    # int8 outputs differ from fp32: caches keyed by the fingerprint must not mix them
    scales = model.runtime.plan.scales  # type: ignore[attr-defined]
    digest = hashlib.sha256(f"{model.fingerprint}|{backend}".encode())
    for name in sorted(scales):
        digest.update(name.encode() + scales[name].numpy().tobytes())
    model.fingerprint = digest.hexdigest()[: len(model.fingerprint) or 16]


def export(
    name_or_path: str,
    backend: str,
    out: str | Path,
    *,
    kind: str = "embedder",
    calibration_texts: list[str] | None = None,
    calibration_source: str = "",
    **load_kwargs: Any,
) -> ExportManifest:
    """Load ``name_or_path`` (fp32, CPU), convert it to ``backend`` and write ``out``."""
    from .embedder import Embedder
    from .reranker import Reranker

    if backend not in EXPORT_BACKENDS:
        raise ValueError(f"cannot export for backend {backend!r}; choose one of {list(EXPORT_BACKENDS)}")
    if kind not in ("embedder", "reranker"):
        raise ValueError(f"kind must be 'embedder' or 'reranker', got {kind!r}")
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise ExportError(f"{target} exists and is not empty; choose a new --out directory")
    cls = Embedder if kind == "embedder" else Reranker
    model: Any = cls.from_pretrained(name_or_path, device="cpu", dtype="float32", **load_kwargs)
    texts = calibration_texts or builtin_calibration_texts()
    source = calibration_source or (
        "texts given" if calibration_texts else "embedforge built-in texts (personas)"
    )
    if backend in ONNX_BACKENDS:
        from .export_onnx import export_onnx

        return export_onnx(model, name_or_path, backend, target, kind, texts, source)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)  # fp32 weights, tokenizer, sentence-transformers files
    record = quantize_int8(model, texts, source=source)
    _save_plan(model.runtime.plan, target)
    manifest = ExportManifest(
        backend=backend,
        kind=kind,
        embedforge_version=embedforge_version(),
        source=str(name_or_path),
        int8=record["int8"],
        calibration=record["calibration"],
    )
    manifest.write(target)
    return manifest


__all__ = [
    "EXPORT_BACKENDS",
    "INT8_PLAN",
    "MANIFEST",
    "ONNX_BACKENDS",
    "ExportError",
    "ExportManifest",
    "apply_backend",
    "builtin_calibration_texts",
    "check_export",
    "export",
    "export_runtime",
    "load_int8_plan",
    "quantize_int8",
    "read_calibration_texts",
    "read_manifest",
]
