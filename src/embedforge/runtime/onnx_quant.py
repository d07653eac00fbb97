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
from onnx import TensorProto, helper, numpy_helper

ALPHAS: tuple[float | None, ...] = (None, 0.5, 0.65, 0.8, 0.9, 1.0)  # SmoothQuant strengths tried
MODES: tuple[str, ...] = ("per-tensor", "per-token", "per-token-residual")  # cheapest first
SAMPLE_ROWS = 128  # valid-token rows sampled per MatMul input to simulate int8 error
OUTLIER_ROWS = 32  # ... plus the rows with the largest max |x|
PER_TENSOR_SLACK = 1.25  # auto: per-tensor where its simulated error is at most this times per-token's
MIN_HEAD_OUTPUTS = 8  # fewer outputs than this: a score head, kept fp32
MS_DOMAIN = "com.microsoft"
SHAPE_ONLY = ("Shape", "Size")  # consumers that read a tensor's shape, not its values

Feed = Mapping[str, np.ndarray]
Agreement = Callable[[list[np.ndarray], list[np.ndarray]], float]


# ---------------------------------------------------------------------------- graph analysis
@dataclass(frozen=True)
class Target:
    """A MatMul / Gemm node computing ``x @ weight (+ bias)`` with a constant (K, N) weight."""

    node: str
    x: str
    output: str
    weight: np.ndarray  # (K, N) float32, as used in x @ weight
    bias: str | None  # a Gemm's C input


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # topological order: an Identity's input is known before it
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in out:  # a weight shared by an exporter
            out[node.output[0]] = out[node.input[0]]
    return out


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique name (exporters may leave them empty), deterministically."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _weight(
    name: str, consts: Mapping[str, np.ndarray], producers: Mapping[str, onnx.NodeProto]
) -> np.ndarray | None:
    """The constant 2-D matrix behind ``name``, directly or through a 2-D Transpose."""
    if name in consts:
        w = consts[name]
    elif name in producers and producers[name].op_type == "Transpose" and producers[name].input[0] in consts:
        node = producers[name]
        perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
        w = consts[node.input[0]]
        if w.ndim != 2 or perm not in ([], [[1, 0]]):
            return None
        w = w.T
    else:
        return None
    return w if w.ndim == 2 and w.dtype == np.float32 else None


def find_targets(model: onnx.ModelProto) -> tuple[list[Target], dict[str, str]]:
    """The quantisable MatMul / Gemm nodes, and the skipped ones with the reason."""
    graph = model.graph
    consts = _constants(graph)
    producers = {out: node for node in graph.node for out in node.output}
    tables = [consts[n.input[0]] for n in graph.node if n.op_type == "Gather" and n.input[0] in consts]
    vocab = max((t.shape[0] for t in tables if t.ndim == 2), default=-1)
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = _weight(node.input[1], consts, producers)
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        if w is None or (bias is not None and bias not in consts):
            skipped[node.name] = "weight (or Gemm bias) is not a constant float32 matrix"
            continue
        if node.op_type == "Gemm":
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                skipped[node.name] = "Gemm with transA, alpha or beta"
                continue
            w = w.T if attrs.get("transB", 0) else w
        if w.shape[1] == vocab and vocab > w.shape[0]:
            skipped[node.name] = f"LM head ({vocab} outputs, the embedding table's rows)"
        elif w.shape[1] < MIN_HEAD_OUTPUTS:
            skipped[node.name] = f"score head ({w.shape[1]} outputs)"
        else:
            targets.append(Target(node.name, node.input[0], node.output[0], np.ascontiguousarray(w), bias))
    return targets, skipped


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
def quantize_weight(w: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel: ``(w_q (K, N) int8, scale (N,))``, ``w ~ w_q * scale``."""
    scale = np.abs(w).max(0) / qmax  # (N,)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8), scale


def smoothing_scale(
    absmax: np.ndarray, weights: Sequence[np.ndarray], alpha: float | None
) -> np.ndarray | None:
    """SmoothQuant's ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` over a group's (K, N) weights."""
    if alpha is None:
        return None
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (SmoothQuant migration strength) must be in [0, 1] or None, got {alpha}")
    wmax = np.maximum(np.max([np.abs(w).max(1) for w in weights], axis=0), 1e-5)  # (K,)
    return np.maximum(np.maximum(absmax, 1e-5) ** alpha / wmax ** (1.0 - alpha), 1e-5).astype(np.float32)


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


# ---------------------------------------------------------------------------- graph rewrite
@dataclass(frozen=True)
class Plan:
    """What :func:`build_quantized` does: per group input, the activation mode and alpha; the
    MatMuls named in ``keep_fp32`` stay fp32."""

    groups: dict[str, tuple[str, float | None]]
    keep_fp32: frozenset[str]


def _fold_site(
    graph: onnx.GraphProto,
    x: str,
    members: set[str],
    consts: Mapping[str, np.ndarray],
    int8: Mapping[str, Target],
) -> tuple[onnx.NodeProto, list[int]] | Target | None:
    """Where dividing ``x`` by ``s`` can be folded exactly, ``x`` feeding nothing but ``members``
    (and shape reads): the producing node and its constant (K,) inputs to divide (a
    LayerNormalization's scale and bias, RMSNorm's weight in a Mul), or the int8 MatMul whose
    output columns to divide (``x = act(gate) * up``: the up projection, read by nothing else)."""
    consumers = {n.name for n in graph.node if x in n.input and n.op_type not in SHAPE_ONLY}
    producer = next((n for n in graph.node if x in n.output), None)
    if consumers != members or producer is None or any(o.name == x for o in graph.output):
        return None
    slots: list[int] = []
    if producer.op_type == "LayerNormalization":
        axis = [helper.get_attribute_value(a) for a in producer.attribute if a.name == "axis"]
        slots = (
            [i for i in (1, 2) if i < len(producer.input) and producer.input[i]] if axis in ([], [-1]) else []
        )
    elif producer.op_type == "Mul":
        slots = [i for i in (0, 1) if producer.input[i] in consts]
        ups = [int8[i] for i in producer.input if i in int8 and int8[i].bias is None]
        if not slots and len(ups) == 1:
            readers = [n for n in graph.node if ups[0].output in n.input and n.op_type not in SHAPE_ONLY]
            return ups[0] if readers == [producer] else None
    if len(slots) not in (1, 2) or any(
        consts.get(producer.input[i], np.zeros((0, 0))).ndim != 1 for i in slots
    ):
        return None
    return producer, slots


class _Builder:
    """Collects the new initializers and nodes of one rewrite; names are prefixed per group."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.inits: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        domain = MS_DOMAIN if op == "MatMulIntegerToFloat" else ""
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def quantiser(self, pre: str, x: str, k: int, mode: str) -> list[tuple[str, str, str]]:
        """Nodes quantising ``x`` (..., k): ``(x_q, a_scale, a_zero_point)`` per int8 product to sum."""
        if mode == "per-tensor":
            self.nodes.append(
                helper.make_node(
                    "DynamicQuantizeLinear", [x], [pre + "xq", pre + "scale", pre + "zp"], name=pre + "dql"
                )
            )
            return [(pre + "xq", pre + "scale", pre + "zp")]
        if mode not in MODES:
            raise ValueError(f"activation mode {mode!r} is not one of {list(MODES)}")
        axes = [self.const(pre + "axes", np.array([-1], np.int64))] if self.opset >= 18 else []
        kw = {} if self.opset >= 18 else {"axes": [-1]}
        hi = self.node("ReduceMax", [x, *axes], pre + "hi", keepdims=1, **kw)  # (..., 1), no |x| pass
        lo = self.node("ReduceMin", [x, *axes], pre + "lo", keepdims=1, **kw)
        amax = self.node("Max", [hi, self.node("Neg", [lo], pre + "nlo")], pre + "amax")
        s0 = self.node("Mul", [amax, self.const(pre + "inv127", np.array(1 / 127, np.float32))], pre + "s0")
        scale = self.node("Max", [s0, self.const(pre + "tiny", np.array(1e-12, np.float32))], pre + "scale")
        zp = self.const(pre + "zp", np.array(128, np.uint8))
        if self.opset >= 21 and mode == "per-token":  # one QuantizeLinear, a scale per row (block)
            zps = self.node("Expand", [zp, self.node("Shape", [scale], pre + "rows")], pre + "zps")
            xq = self.node("QuantizeLinear", [x, scale, zps], pre + "xq", axis=-1, block_size=k)
            return [(xq, scale, zp)]
        xd = self.node("Div", [x, scale], pre + "xd")  # in [-127, 127]
        one = self.const(pre + "one", np.array(1.0, np.float32))
        parts = [(self.node("QuantizeLinear", [xd, one, zp], pre + "xq"), scale, zp)]
        if mode == "per-token-residual":  # the rounding error of xd, in [-0.5, 0.5], as a second int8
            rest = self.node("Sub", [xd, self.node("Round", [xd], pre + "xr")], pre + "rest")
            step = self.const(pre + "step", np.array(1 / 254, np.float32))
            xq2 = self.node("QuantizeLinear", [rest, step, zp], pre + "xq2")
            parts.append((xq2, self.node("Mul", [scale, step], pre + "scale2"), zp))
        return parts


def build_quantized(
    model: onnx.ModelProto, targets: Sequence[Target], stats: Mapping[str, InputStats], plan: Plan, qmax: int
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` with the planned MatMuls in int8; also how each group was smoothed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = _constants(graph)
    b = _Builder(_opset(out))
    groups: dict[str, list[Target]] = {}
    for t in targets:
        if t.node not in plan.keep_fp32 and t.x in plan.groups:
            groups.setdefault(t.x, []).append(t)
    int8 = {t.output: t for ts in groups.values() for t in ts}
    scales: dict[str, np.ndarray | None] = {}
    columns: dict[str, np.ndarray] = {}  # MatMul name -> divisor of its output columns
    inputs: dict[str, str] = {}  # group input -> the tensor to quantise
    smoothing: dict[str, str] = {}
    for g, (x, members) in enumerate(sorted(groups.items())):
        everyone = [t.weight for t in targets if t.x == x]  # the scale sees the whole group, as simulated
        s = scales[x] = smoothing_scale(stats[x].absmax, everyone, plan.groups[x][1])
        inputs[x] = x
        site = (
            None
            if s is None or len(members) < len(everyone)
            else _fold_site(graph, x, {t.node for t in members}, consts, int8)
        )
        if s is None:
            continue
        if isinstance(site, Target):
            columns[site.node] = s
            smoothing[x] = "folded into the output columns of " + site.node
        elif site is not None:
            producer, slots = site
            for i in slots:
                producer.input[i] = b.const(
                    f"q{g}_norm{i}", (consts[producer.input[i]] / s).astype(np.float32)
                )
            smoothing[x] = "folded into " + producer.name
        else:
            inputs[x] = b.node(
                "Mul", [x, b.const(f"q{g}_inv_s", (1.0 / s).astype(np.float32))], f"q{g}_smoothed"
            )
            smoothing[x] = "Mul"
    smooth_muls, emit = b.nodes, {}  # first member's name -> the nodes to put in its place
    for g, (x, members) in enumerate(sorted(groups.items())):
        mode, s = plan.groups[x][0], scales[x]
        b.nodes = [n for n in smooth_muls if n.input[0] == x]
        parts = b.quantiser(f"q{g}_", inputs[x], members[0].weight.shape[0], mode)
        for t in members:
            w = t.weight if s is None else t.weight * s[:, None]
            wq, wscale = quantize_weight(w / columns[t.node] if t.node in columns else w, qmax)
            wname, sname = b.const(t.node + "_wq", wq), b.const(t.node + "_wscale", wscale)
            fuse_bias = (
                len(parts) == 1 and mode == "per-tensor" and t.bias is not None and consts[t.bias].ndim == 1
            )
            outs = [f"{t.node}_int8_{k}" for k in range(len(parts))]
            if len(parts) == 1 and (t.bias is None or fuse_bias):
                outs = [t.output]
            bias = ["", t.bias or ""] if fuse_bias else []
            ys = [
                b.node("MatMulIntegerToFloat", [xq, wname, a, sname, zp, *bias], o)
                for o, (xq, a, zp) in zip(outs, parts, strict=True)
            ]
            if ys[0] != t.output:  # the residual part's sum, then a Gemm's bias (after the row scales)
                total = (
                    ys[0]
                    if len(ys) == 1
                    else b.node("Add", ys, t.output if t.bias is None else t.node + "_sum")
                )
                if t.bias is not None:
                    b.node("Add", [total, t.bias], t.output)
        emit[members[0].node] = b.nodes
    replaced = {t.node for ts in groups.values() for t in ts}
    nodes = [
        n for node in graph.node for n in emit.get(node.name, [node] if node.name not in replaced else [])
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(b.inits)
    _prune(graph)
    if not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out, smoothing


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers that no graph output depends on (the replaced fp32 weights)."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


# ---------------------------------------------------------------------------- calibration
def cpu_has_vnni() -> bool:
    """Whether this CPU accumulates u8 x s8 products in 32 bits (VNNI / AMX): no saturation."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return platform.machine().lower() in ("arm64", "aarch64")  # sdot/udot accumulate in 32 bits
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _opset_21(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model at opset 21, whose QuantizeLinear takes a scale per row (one pass instead of a
    Div and a QuantizeLinear: 2x faster), when ONNX's version converter manages; else as it was."""
    was = _opset(model)
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
    _name_nodes(model.graph)
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
    modes = MODES if activations == "auto" else (activations,)
    weights = {x: [t.weight for t in targets if t.x == x] for x in inputs}
    sim = {x: simulate_group(stats[x], weights[x], alphas, qmax, modes) for x in inputs}
    trials: list[dict[str, Any]] = []

    def plan_for(level: Mapping[str, int], keep: Iterable[str]) -> Plan:
        return Plan({x: (MODES[m], sim[x][MODES[m]].alpha) for x, m in level.items()}, frozenset(keep))

    def measure(plan: Plan, label: str) -> float:
        quantized, _ = build_quantized(model, targets, stats, plan, qmax)
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
    quantized, how = build_quantized(model, targets, stats, best_plan, qmax)
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
