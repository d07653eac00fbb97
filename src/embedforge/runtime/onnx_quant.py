"""``onnx-int8``: int8 quantisation of our ONNX graph that holds on decoders' massive activations.

Every MatMul (or Gemm) whose weight is a constant 2-D initializer (possibly behind a Transpose)
is rewritten to int8, except the LM head (its output size is the embedding table's row count)
and score heads (fewer than 8 outputs: the reranker's yes/no rows). Weights are int8, symmetric,
one scale per output channel. Activations are quantised on the fly to uint8, in one of two ways:

- ``per-token``: one scale per row, ``max|x_row| / 127`` with zero point 128, in plain ONNX ops
  (``Abs``, ``ReduceMax``, ``Div``, ``QuantizeLinear``) and ORT's ``MatMulIntegerToFloat``, which
  takes the per-row scale as its ``a_scale`` (broadcast over the output) and the per-channel
  weight scale as ``b_scale``: the u8 x s8 MLAS kernels, one fused dequantisation;
- ``per-tensor``: ORT's ``DynamicQuantizeLinear`` (one asymmetric scale per call) and the same
  ``MatMulIntegerToFloat``, bias fused. Cheaper, but a single token with a massive activation
  (SmolLM2-135M: max |x| 3,113 at one down projection) sets the scale for the whole batch and
  the other tokens are left with a few levels (the limit of :mod:`embedforge.runtime.int8`).

MatMuls that read the same tensor (q/k/v, gate/up) form a group that shares one quantiser and
one SmoothQuant scale ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (Xiao et al., 2023,
arXiv:2211.10438), with ``max|W_j|`` taken over the group's weights. The division by ``s`` is
folded into the producing norm's weight when that is exact (a ``LayerNormalization`` or an RMSNorm
``Mul`` by a constant (K,) vector whose output only feeds the group: Llama, Qwen3), otherwise it
is an explicit ``Mul`` (BERT's post-norm output also feeds the residual).

Everything is chosen by measurement on the calibration feeds: the fp32 graph runs with every
MatMul input exposed as an extra output; per group and per activation mode, the alpha with the
smallest mean per-row relative error of the simulated int8 product (on sampled rows, the largest
rows always included) wins. With ``activations="auto"``, all per-tensor is tried end to end
first; if it misses ``target``, groups switch to per-token in order of their simulated gain
(1, 2, 4, ... groups) until the target is met. If still short, the worst MatMuls go back to fp32
(1, 2, 4, ... up to ``max_keep``). The report records every trial.

The graph side (finding the MatMuls, the rewrite by a :class:`Plan`) is
:mod:`embedforge.runtime.onnx_int8_graph`; this module measures, simulates and chooses.

Saturation: on AVX2 without VNNI, MLAS's u8 x s8 kernel sums pairs of products in 16 bits
(``vpmaddubsw``), which can saturate with 8-bit weights; ``reduce_range="auto"`` then keeps
weights to 7 bits. With AVX512-VNNI / AVX-VNNI / AMX (32-bit accumulation) it keeps 8 bits.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
from onnx import TensorProto, helper

from .onnx_int8_graph import (
    MODES,
    Plan,
    Target,
    build_quantized,
    find_targets,
    name_nodes,
    opset_of,
    quantize_weight,
    smoothing_scale,
)

ALPHAS: tuple[float | None, ...] = (None, 0.5, 0.65, 0.8, 0.9, 1.0)  # SmoothQuant strengths tried
SAMPLE_ROWS = 128  # valid-token rows sampled per MatMul input to simulate int8 error
OUTLIER_ROWS = 32  # ... plus the rows with the largest max |x|
PER_TENSOR_SLACK = 1.25  # auto: per-tensor where its simulated error is at most this times per-token's

Feed = Mapping[str, np.ndarray]
Agreement = Callable[[list[np.ndarray], list[np.ndarray]], float]


# ---------------------------------------------------------------------------- feeds and sessions
def check_feeds(model: onnx.ModelProto, calibration: Sequence[Feed]) -> None:
    """Raise ``ValueError`` naming what is wrong unless every feed matches the graph's inputs."""
    names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if not calibration:
        raise ValueError("calibration is empty: give at least one feed {input name: array}")
    for k, feed in enumerate(calibration):
        if not isinstance(feed, Mapping) or sorted(feed) != sorted(names):
            got = sorted(feed) if isinstance(feed, Mapping) else type(feed).__name__
            raise ValueError(f"calibration feed {k} has inputs {got}; the graph takes {names}")
        shapes = set()
        for name, value in feed.items():
            if not isinstance(value, np.ndarray) or value.dtype != np.int64 or value.ndim != 2:
                desc = (
                    f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
                )
                raise ValueError(
                    f"calibration feed {k} input {name!r} must be an int64 (batch, seq) array, got {desc}"
                )
            shapes.add(value.shape)
        if len(shapes) != 1:
            raise ValueError(f"calibration feed {k}: inputs differ in shape {sorted(shapes)}")


def session(model: onnx.ModelProto | Path | str, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session (all graph optimisations) for a model proto or file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def min_row_cosine(reference: list[np.ndarray], output: list[np.ndarray]) -> float:
    """Smallest per-row cosine between matching arrays (rows: all but the last axis)."""
    worst = 1.0
    for ref, out in zip(reference, output, strict=True):
        r, o = (
            ref.reshape(-1, ref.shape[-1]).astype(np.float64),
            out.reshape(-1, out.shape[-1]).astype(np.float64),
        )
        cos = (r * o).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1), 1e-30)
        worst = min(worst, float(cos.min()))
    return worst


# ---------------------------------------------------------------------------- activation statistics
@dataclass
class InputStats:
    """What calibration saw at one MatMul input of width K."""

    absmax: np.ndarray  # (K,) max |x| per channel over real tokens: SmoothQuant's max|X_j|
    low: np.ndarray  # (K,) min per channel over whole calls (padding included) ...
    high: np.ndarray  # (K,) ... and max: the range a per-tensor quantiser may meet in one call
    rows: np.ndarray  # (R, K) sampled real-token rows, the largest ones included


def collect_stats(
    model: onnx.ModelProto, names: Sequence[str], calibration: Sequence[Feed]
) -> tuple[dict[str, InputStats], list[np.ndarray]]:
    """Run the fp32 graph once over the feeds with ``names`` exposed as extra outputs: each
    one's :class:`InputStats`, and graph output 0 per feed (the reference)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in known
    )
    sess = session(probe)
    output_names = [o.name for o in sess.get_outputs()]
    quota = -(-SAMPLE_ROWS // len(calibration))  # strided rows per feed
    parts: dict[str, list[tuple[np.ndarray, ...]]] = {n: [] for n in names}
    reference = []
    for feed in calibration:
        values = dict(zip(output_names, sess.run(None, dict(feed)), strict=True))
        reference.append(values[output_names[0]])
        mask = np.asarray(feed["attention_mask"]).reshape(-1) > 0 if "attention_mask" in feed else None
        for n in names:
            x = values[n].reshape(-1, values[n].shape[-1])  # (rows, K)
            real = x[mask] if mask is not None and len(mask) == len(x) else x  # (real rows, K)
            big = np.argsort(-np.abs(real).max(1), kind="stable")[:OUTLIER_ROWS]
            strided = np.unique(np.linspace(0, len(real) - 1, min(quota, len(real))).round().astype(int))
            parts[n].append((np.abs(real).max(0), x.min(0), x.max(0), real[strided], real[big]))
    stats = {}
    for n in names:
        absmax, low, high, strided, big = zip(*parts[n], strict=True)
        big_rows = np.concatenate(big)
        top = np.argsort(-np.abs(big_rows).max(1), kind="stable")[:OUTLIER_ROWS]
        rows = np.concatenate([*strided, big_rows[top]]).astype(np.float32)
        stats[n] = InputStats(np.max(absmax, axis=0), np.min(low, axis=0), np.max(high, axis=0), rows)
    return stats, reference


# ---------------------------------------------------------------------------- int8 simulation
def fake_quantize(x: np.ndarray, mode: str, low: float, high: float) -> np.ndarray:
    """``x`` (R, K) through the graph's activation quantiser; ``[low, high]``: a per-tensor call's range."""
    if mode == "per-tensor":  # ORT's DynamicQuantizeLinear
        low, high = min(low, 0.0), max(high, 0.0)
        scale = np.float32((high - low) / 255 if high > low else 1.0)
        zp = np.float32(np.clip(np.rint(-low / scale), 0, 255))
        return (np.clip(np.rint(x / scale) + zp, 0, 255) - zp) * scale
    scale = np.abs(x).max(1, keepdims=True) / 127  # (R, 1)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    xd = x / scale  # in [-127, 127]
    q = np.rint(xd)
    if mode == "per-token-residual":  # the rounding error, in [-0.5, 0.5] steps, as a second int8
        q = q + np.rint((xd - q) * 254) / 254
    return q * scale


def _row_error(out: np.ndarray, ref: np.ndarray) -> float:
    """Mean over rows of ``|out - ref| / |ref|``: every token counts, whatever its magnitude."""
    den = np.linalg.norm(ref, axis=1)
    den = np.maximum(den, 1e-6 * max(float(den.mean()), 1e-30))
    return float((np.linalg.norm(out - ref, axis=1) / den).mean())


@dataclass(frozen=True)
class Choice:
    """A group's best alpha in one activation mode and its simulated error (mean over its MatMuls)."""

    alpha: float | None
    error: float
    member_errors: tuple[float, ...]


def simulate_group(
    stats: InputStats,
    weights: Sequence[np.ndarray],
    alphas: Iterable[float | None],
    qmax: int,
    modes: Sequence[str],
) -> dict[str, Choice]:
    """Per activation mode, the alpha whose int8 products are closest to fp32 on the sampled rows
    (float32 products: their rounding is far below int8's error). Per-tensor is simulated on the
    widest range calibration met: any call may hold the most extreme token seen."""
    x = stats.rows  # (R, K)
    refs = [x @ w for w in weights]  # (R, N) each
    best: dict[str, Choice] = {}
    for alpha in alphas:
        s = smoothing_scale(stats.absmax, weights, alpha)
        inv = np.ones(x.shape[1], np.float32) if s is None else 1.0 / s  # (K,)
        low, high = float((stats.low * inv).min()), float((stats.high * inv).max())
        deq = []
        for w in weights:
            wq, wscale = quantize_weight(w if s is None else w * s[:, None], qmax)
            deq.append(wq.astype(np.float32) * wscale)
        for mode in modes:
            xq = fake_quantize(x * inv, mode, low, high)
            errs = tuple(_row_error(xq @ d, r) for d, r in zip(deq, refs, strict=True))
            if mode not in best or float(np.mean(errs)) < best[mode].error:
                best[mode] = Choice(alpha, float(np.mean(errs)), errs)
    if not best:
        raise ValueError("no SmoothQuant alpha to try (alphas is empty)")
    return best


# ---------------------------------------------------------------------------- calibration
def cpu_has_vnni() -> bool:
    """Whether this CPU accumulates u8 x s8 products in 32 bits (VNNI / AMX): no saturation."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return platform.machine().lower() in ("arm64", "aarch64")  # sdot/udot accumulate in 32 bits
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _opset_21(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model at opset 21, whose QuantizeLinear takes a scale per row (one pass instead of a
    Div and a QuantizeLinear: 2x faster), when ONNX's version converter manages; else as it was."""
    was = opset_of(model)
    if was >= 21:
        return model, str(was)
    try:
        return onnx.version_converter.convert_version(model, 21), f"{was} -> 21"
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
        return model, f"{was} (version converter: {str(exc)[:120]})"


def _run(sess: Any, calibration: Sequence[Feed]) -> list[np.ndarray]:
    return [sess.run(None, dict(feed))[0] for feed in calibration]


def _upgrades(sim: Mapping[str, Mapping[str, Choice]], start: Mapping[str, int]) -> list[tuple[str, int]]:
    """Every step of a group to the next dearer activation mode, largest simulated gain first."""
    steps = [
        (sim[x][MODES[m - 1]].error - sim[x][MODES[m]].error, x, m)
        for x in sorted(start)
        for m in range(start[x] + 1, len(MODES))
    ]
    return [(x, m) for _, x, m in sorted(steps, key=lambda s: -s[0])]


def quantize_onnx(
    src: Path,
    dst: Path,
    calibration: list[dict[str, np.ndarray]],
    *,
    agreement: Agreement | None = None,
    target: float = 0.99,
    activations: str = "auto",
    alphas: Sequence[float | None] = ALPHAS,
    keep_fp32: Sequence[str] | None = None,
    max_keep: int = 16,
    reduce_range: bool | str = "auto",
) -> dict[str, Any]:
    """Quantise the graph at ``src`` to int8 and save it at ``dst``; return a JSON-able report.

    ``calibration`` is a list of ONNX feeds (``{"input_ids": int64 (B, S), "attention_mask":
    int64 (B, S)}``); ``agreement(fp32_outputs, int8_outputs)`` compares graph output 0 over those
    feeds (higher is better; default :func:`min_row_cosine`). Settings: ``activations`` is
    ``"auto"`` (per group, by measurement) or one of :data:`MODES` for every group; ``alphas`` the
    SmoothQuant strengths tried per group (``None``: no smoothing); ``keep_fp32`` MatMul node
    names kept in fp32 (``None``: chosen, up to ``max_keep``, while below ``target``);
    ``reduce_range`` 7-bit weights (``"auto"``: when the CPU lacks VNNI, see the module docstring).
    """
    import onnxruntime as ort

    if activations not in ("auto", *MODES):
        raise ValueError(f"activations={activations!r}; choose 'auto' or one of {list(MODES)}")
    if reduce_range not in ("auto", True, False):
        raise ValueError(f"reduce_range={reduce_range!r}; choose 'auto', True or False")
    narrow = (not cpu_has_vnni()) if reduce_range == "auto" else bool(reduce_range)
    qmax, agree, alphas = (63 if narrow else 127), (agreement or min_row_cosine), tuple(alphas)
    model, opset = _opset_21(onnx.load(str(src)))
    name_nodes(model.graph)
    check_feeds(model, calibration)
    targets, skipped = find_targets(model)
    if not targets:
        found = sorted({n.op_type for n in model.graph.node})
        raise ValueError(
            f"{src}: no quantisable MatMul/Gemm (a constant 2-D float32 weight, not the LM head); "
            f"skipped: {skipped or 'none'}; op types in the graph: {found}"
        )
    unknown = sorted(set(keep_fp32 or ()) - {t.node for t in targets})
    if unknown:
        raise ValueError(
            f"keep_fp32 names {unknown[:5]} are not quantisable MatMuls of {src}; see find_targets"
        )

    inputs = sorted({t.x for t in targets})
    stats, reference = collect_stats(model, inputs, calibration)
    absmax = {x: st.absmax for x, st in stats.items()}
    modes = MODES if activations == "auto" else (activations,)
    weights = {x: [t.weight for t in targets if t.x == x] for x in inputs}
    sim = {x: simulate_group(stats[x], weights[x], alphas, qmax, modes) for x in inputs}
    trials: list[dict[str, Any]] = []

    def plan_for(level: Mapping[str, int], keep: Iterable[str]) -> Plan:
        return Plan({x: (MODES[m], sim[x][MODES[m]].alpha) for x, m in level.items()}, frozenset(keep))

    def measure(plan: Plan, label: str) -> float:
        quantized, _ = build_quantized(model, targets, absmax, plan, qmax)
        value = agree(reference, _run(session(quantized), calibration))
        counts = {m: sum(g[0] == m for g in plan.groups.values()) for m in MODES}
        trials.append({"trial": label, **counts, "keep_fp32": len(plan.keep_fp32), "agreement": value})
        return value

    # activation modes: auto starts each group per-tensor where that costs at most PER_TENSOR_SLACK
    # times per-token's simulated error (else per-token), then takes the steps to dearer modes,
    # largest simulated gain first (1, 2, 4, ... steps), until the target is met
    if activations == "auto":
        pt, tok = sim.items(), MODES.index("per-token")
        level = {
            x: 0 if s["per-tensor"].error <= PER_TENSOR_SLACK * s["per-token"].error else tok for x, s in pt
        }
    else:
        level = dict.fromkeys(inputs, MODES.index(activations))
    steps = _upgrades(sim, level) if activations == "auto" else []
    fixed = tuple(keep_fp32 or ())
    scored: list[tuple[float, int, Plan]] = []
    for k in [0, *(2**i for i in range(len(steps).bit_length()) if 2**i < len(steps)), len(steps)][
        : len(steps) + 1
    ]:
        now = dict(level)
        for x, m in steps[:k]:
            now[x] = max(now[x], m)
        plan = plan_for(now, fixed)
        scored.append((measure(plan, f"{k} of {len(steps)} mode steps"), -k, plan))
        if scored[-1][0] >= target:
            break
    best, _, best_plan = scored[-1] if scored[-1][0] >= target else max(scored, key=lambda s: s[:2])

    # fp32 fallbacks: the MatMuls with the largest simulated error, 1, 2, 4, ... while below target
    if keep_fp32 is None and best < target:
        errors: dict[str, float] = {}
        for x in inputs:
            members = [t.node for t in targets if t.x == x]
            errors.update(zip(members, sim[x][best_plan.groups[x][0]].member_errors, strict=True))
        ranked, base, k = sorted(errors, key=lambda n: -errors[n]), best_plan, 1
        while best < target and k <= min(max_keep, len(ranked)):
            plan = Plan(base.groups, frozenset(ranked[:k]))
            value = measure(plan, f"keep {k} fp32")
            if value > best:
                best, best_plan = value, plan
            k *= 2
    quantized, how = build_quantized(model, targets, absmax, best_plan, qmax)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(quantized, str(dst))

    matmuls = {}
    for t in targets:
        mode, alpha = best_plan.groups[t.x]
        kept = t.node in best_plan.keep_fp32
        matmuls[t.node] = {
            "input": t.x,
            "shape": list(t.weight.shape),
            "activations": "fp32" if kept else mode,
            "alpha": None if kept else alpha,
            "smoothing": None if kept else how.get(t.x),
            "simulated_error": {m: round(c.error, 6) for m, c in sim[t.x].items()},
        }
    return {
        "method": "int8 weights per output channel; dynamic uint8 activations per tensor, per token or per "
        "token with the rounding residual as a second int8; SmoothQuant per MatMul group; fp32 fallbacks",
        "activations": activations,
        "modes": {m: sum(g[0] == m for g in best_plan.groups.values()) for m in MODES},
        "groups": len(inputs),
        "weight_bits": 7 if narrow else 8,
        "opset": opset,
        "cpu_vnni": cpu_has_vnni(),
        "alphas_tried": list(alphas),
        "matmuls": matmuls,
        "keep_fp32": sorted(best_plan.keep_fp32),
        "skipped": skipped,
        "agreement": best,
        "target": target,
        "agreement_measure": getattr(agree, "__name__", repr(agree)),
        "trials": trials,
        "calibration": {
            "feeds": len(calibration),
            "rows": int(sum(next(iter(f.values())).size for f in calibration)),
        },
        "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__},
    }


__all__ = [
    "ALPHAS",
    "MODES",
    "Choice",
    "InputStats",
    "Plan",
    "Target",
    "build_quantized",
    "check_feeds",
    "collect_stats",
    "cpu_has_vnni",
    "fake_quantize",
    "find_targets",
    "min_row_cosine",
    "quantize_onnx",
    "quantize_weight",
    "session",
    "simulate_group",
    "smoothing_scale",
]
