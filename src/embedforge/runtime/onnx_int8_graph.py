"""The int8 graph of ``onnx-int8``: which MatMuls can be quantised, and the rewrite that quantises them.

:func:`find_targets` finds every MatMul / Gemm with a constant 2-D float32 weight (the LM head and
score heads excepted); :func:`build_quantized` rewrites a graph by a :class:`Plan` (per group
input: the activation mode and the SmoothQuant strength; MatMuls kept fp32), folding the smoothing
into the producing norm where that is exact. How the plan is chosen, by measurement on
calibration feeds, is :mod:`embedforge.runtime.onnx_quant`'s part; the modes are described there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

MODES: tuple[str, ...] = ("per-tensor", "per-token", "per-token-residual")  # cheapest first
MIN_HEAD_OUTPUTS = 8  # fewer outputs than this: a score head, kept fp32
MS_DOMAIN = "com.microsoft"
SHAPE_ONLY = ("Shape", "Size")  # consumers that read a tensor's shape, not its values


# ---------------------------------------------------------------------------- graph analysis
@dataclass(frozen=True)
class Target:
    """A MatMul / Gemm node computing ``x @ weight (+ bias)`` with a constant (K, N) weight."""

    node: str
    x: str
    output: str
    weight: np.ndarray  # (K, N) float32, as used in x @ weight
    bias: str | None  # a Gemm's C input


def constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # topological order: an Identity's input is known before it
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in out:  # a weight shared by an exporter
            out[node.output[0]] = out[node.input[0]]
    return out


def name_nodes(graph: onnx.GraphProto) -> None:
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
    consts = constants(graph)
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


# ---------------------------------------------------------------------------- int8 weights
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


def opset_of(model: onnx.ModelProto) -> int:
    """The model's default-domain opset version."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


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
    model: onnx.ModelProto,
    targets: Sequence[Target],
    absmax: Mapping[str, np.ndarray],
    plan: Plan,
    qmax: int,
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` with the planned MatMuls in int8 (``absmax``: per group input, its (K,)
    max |x| per channel from calibration); also how each group was smoothed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    consts = constants(graph)
    b = _Builder(opset_of(out))
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
        s = scales[x] = smoothing_scale(absmax[x], everyone, plan.groups[x][1])
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


__all__ = [
    "MODES",
    "Plan",
    "Target",
    "build_quantized",
    "constants",
    "find_targets",
    "name_nodes",
    "opset_of",
    "quantize_weight",
    "smoothing_scale",
]
