"""``torch-int8``: int8 weights and activations on CPU, with SmoothQuant scaling.

Every ``nn.Linear`` of the backbone (not the LM head: the reranker reads only two of its rows)
becomes a :class:`SmoothQuantLinear`: ``y = Q(x / s) @ Q(W * s)^T + b``, where ``W * s`` is
quantized once to int8 with one scale per output channel (symmetric) and ``x / s`` is quantized
on the fly to uint8 with one scale per call (fbgemm's dynamic linear, the AVX2 u8 x s8 kernels;
fbgemm keeps activations to 7 bits so its 16-bit pair sums cannot saturate).

SmoothQuant (Xiao et al., 2023, arXiv:2211.10438) moves activation outliers into the weights:
per input channel ``j``, ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, with ``max|X_j|``
measured on calibration texts. The division by ``s`` is an explicit multiply rather than folded
into the preceding norm, because in post-norm encoders (BERT) that norm also feeds the residual.

Measured on real weights, one alpha does not fit every linear (all-MiniLM-L6-v2: alpha 0.5 on
every linear gives a minimum cosine of 0.84 against fp32, no smoothing 0.97, 0.8 0.99; the FFN
down projections, fed by GELU outputs, are the sensitive ones), so :func:`calibrate` picks each
linear's alpha (or none) by its own int8 error on calibration activations, then keeps in fp32 the
linears with the largest error, the fewest that bring the end-to-end agreement with fp32 on the
calibration texts to the target.

Limit, measured: a real decoder (SmolLM2-135M, weights dequantised from 4-bit GGUF) has
token-specific massive activations (max |x| 3,113 at one down projection, 2,349 times its median
channel) that one activation scale per call cannot carry: min cosine 0.78 (mean 0.96) against
fp32 over 200 SciFact documents, 0.87 with the six worst linears in fp32. Decoders need per-token
activation scales; until then :func:`embedforge.export.quantize_int8` warns when calibration
stays below its target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .lastpos import LastPositionRuntime

# SmoothQuant migration strengths tried per linear by calibrate; None: no smoothing
ALPHAS: tuple[float | None, ...] = (None, 0.5, 0.65, 0.8, 0.9, 1.0)
SAMPLE_ROWS = 512  # calibration rows kept per linear to rank the linears by their int8 error


def _dynamic_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    float_linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        float_linear.weight.copy_(weight)
        if bias is not None:
            float_linear.bias.copy_(bias)
    float_linear.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
    return DynamicLinear.from_float(float_linear)


class SmoothQuantLinear(nn.Module):
    """``Q(x / s) @ Q(W * s)^T + b``: an int8 stand-in for ``linear`` (see the module docstring)."""

    def __init__(self, linear: nn.Linear, scale: torch.Tensor) -> None:
        super().__init__()
        scale = scale.detach().float()  # (in_features,)
        if scale.shape != (linear.in_features,) or bool((scale <= 0).any()):
            raise ValueError(f"smoothing scale must be ({linear.in_features},) and positive")
        weight = linear.weight.detach().float() * scale  # (out, in): column j times s_j
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.inner: nn.Module = _dynamic_linear(weight, bias)
        self.inv_scale: torch.Tensor
        self.register_buffer("inv_scale", 1.0 / scale)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * self.inv_scale)


# ---------------------------------------------------------------------------- calibration
def backbone_linears(module: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers to quantize, by name: all but the LM head."""
    get_head = getattr(module, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    return {
        name: m for name, m in module.named_modules() if isinstance(m, nn.Linear) and m is not head and name
    }


@dataclass
class ActivationStats:
    """Per linear: the max |x| of each input channel and a sample of input rows."""

    channel_max: dict[str, torch.Tensor]
    samples: dict[str, torch.Tensor]


def collect_stats(linears: Mapping[str, nn.Linear], run: Callable[[], object]) -> ActivationStats:
    """Run ``run()`` (the fp32 model on calibration texts) and record each linear's inputs."""
    stats = ActivationStats({}, {})

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, in)
            cmax = x.abs().amax(dim=0)  # (in,)
            old = stats.channel_max.get(name)
            stats.channel_max[name] = cmax if old is None else torch.maximum(old, cmax)
            if name not in stats.samples:
                stats.samples[name] = x[:SAMPLE_ROWS].clone()

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(linears) - set(stats.channel_max))
    if missing:
        raise RuntimeError(f"calibration never reached these linear layers: {missing[:5]}")
    return stats


def smoothing_scale(channel_max: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``, (in,), clamped away from 0."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (SmoothQuant migration strength) must be in [0, 1], got {alpha}")
    wmax = weight.detach().float().abs().amax(dim=0).clamp(min=1e-5)  # (in,)
    amax = channel_max.clamp(min=1e-5)
    return (amax.pow(alpha) / wmax.pow(1.0 - alpha)).clamp(min=1e-5)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@dataclass(frozen=True)
class Int8Plan:
    """What :func:`apply_plan` does: the smoothing scale of each quantized linear (and the alpha
    it came from, ``None`` for no smoothing); the linears not named stay fp32."""

    scales: dict[str, torch.Tensor]
    alphas: dict[str, float | None]
    keep_fp32: tuple[str, ...]


def apply_plan(module: nn.Module, plan: Int8Plan) -> nn.Module:
    """Replace the planned linears of ``module`` (fp32, CPU) by :class:`SmoothQuantLinear`, in place."""
    linears = backbone_linears(module)
    unknown = sorted(set(plan.scales) - set(linears))
    if unknown:
        raise ValueError(f"the int8 plan names linear layers this model does not have: {unknown[:5]}")
    for name, scale in plan.scales.items():
        _set_submodule(module, name, SmoothQuantLinear(linears[name], scale))
    return module


@dataclass(frozen=True)
class Calibration:
    """Result of :func:`calibrate`: the plan and the agreement with fp32 it reached."""

    plan: Int8Plan
    quality: float  # the agreement measure on the calibration texts (1.0 = identical to fp32)
    trials: list[dict[str, Any]]


def _relative_error(linear: nn.Linear, scale: torch.Tensor, x: torch.Tensor) -> float:
    exact = linear(x)  # (rows, out)
    return float((SmoothQuantLinear(linear, scale)(x) - exact).norm() / exact.norm().clamp(min=1e-12))


def choose_scale(
    linear: nn.Linear, channel_max: torch.Tensor, sample: torch.Tensor, alphas: Iterable[float | None]
) -> tuple[float | None, torch.Tensor, float]:
    """The alpha (``None``: no smoothing) whose int8 linear is closest to fp32 on ``sample``:
    ``(alpha, scale, relative error)``. Outliers differ per layer (a GELU output is not a norm
    output), so each linear gets its own migration strength."""
    best: tuple[float | None, torch.Tensor, float] | None = None
    for alpha in alphas:
        scale = (
            torch.ones(linear.in_features)
            if alpha is None
            else smoothing_scale(channel_max, linear.weight, alpha)
        )
        err = _relative_error(linear, scale, sample)
        if best is None or err < best[2]:
            best = (alpha, scale, err)
    if best is None:
        raise ValueError("no SmoothQuant alpha to try")
    return best


def calibrate(
    module: nn.Module,
    run: Callable[[], torch.Tensor],
    agreement: Callable[[torch.Tensor, torch.Tensor], float],
    *,
    target: float,
    alphas: Iterable[float | None] = ALPHAS,
    max_keep: int = 16,
) -> Calibration:
    """Choose each linear's SmoothQuant alpha and the linears kept in fp32, by measurement.

    ``run()`` runs the model (whatever its linears are at the time) on the calibration texts and
    returns its output; ``agreement(reference, output)`` says how close int8 is (1.0 = equal).
    Each linear takes the alpha with the smallest int8 error on its own calibration inputs
    (:func:`choose_scale`); then linears go back to fp32, largest error first (1, 2, 4, ... up
    to ``max_keep``), while the end-to-end agreement is below ``target``. ``module`` is left as
    found (all fp32); apply the returned plan with :func:`apply_plan`.
    """
    linears = backbone_linears(module)
    alphas = tuple(alphas)
    with torch.inference_mode():
        stats = collect_stats(linears, run)
        reference = run()
        chosen = {
            n: choose_scale(m, stats.channel_max[n], stats.samples[n], alphas) for n, m in linears.items()
        }
    trials: list[dict[str, Any]] = []

    def measure(keep: Sequence[str]) -> float:
        try:
            for n, m in linears.items():
                if n not in keep:
                    _set_submodule(module, n, SmoothQuantLinear(m, chosen[n][1]))
            with torch.inference_mode():
                value = agreement(reference, run())
        finally:
            for n, m in linears.items():
                _set_submodule(module, n, m)
        trials.append({"keep_fp32": len(keep), "agreement": value})
        return value

    ranked = sorted(chosen, key=lambda n: -chosen[n][2])
    keep: list[str] = []
    best = measure(keep)
    k = 1
    while best < target and k <= min(max_keep, len(ranked)):
        value = measure(ranked[:k])
        if value > best:
            best, keep = value, ranked[:k]
        k *= 2
    plan = Int8Plan(
        scales={n: chosen[n][1] for n in linears if n not in keep},
        alphas={n: chosen[n][0] for n in linears if n not in keep},
        keep_fp32=tuple(keep),
    )
    return Calibration(plan, best, trials)


def min_cosine(reference: torch.Tensor, output: torch.Tensor) -> float:
    """Smallest per-row cosine between two (n, d) embedding matrices."""
    cos = nn.functional.cosine_similarity(reference.float(), output.float(), dim=-1)  # (n,)
    return float(cos.min())


def score_agreement(reference: torch.Tensor, output: torch.Tensor) -> float:
    """1 - the largest absolute difference of two score vectors in [0, 1]."""
    return 1.0 - float((reference.float() - output.float()).abs().max())


# ---------------------------------------------------------------------------- runtime
class Int8Runtime(LastPositionRuntime):
    """A transformers module whose linears were replaced by :func:`apply_plan`; CPU, float32.

    Last-token pooling and the reranker's states use last-position decoding where the
    architecture allows it (:class:`~embedforge.runtime.lastpos.LastPositionRuntime`).
    """

    backend = "torch-int8"

    def __init__(self, module: nn.Module, *, causal: bool = True, last_position: bool = True) -> None:
        super().__init__(module, causal=causal, last_position=last_position)
        if self.device.type != "cpu" or self.dtype != torch.float32:
            raise ValueError(
                f"the torch-int8 backend runs on CPU in float32; got device={self.device}, dtype={self.dtype}"
            )


__all__ = [
    "ALPHAS",
    "Calibration",
    "Int8Plan",
    "Int8Runtime",
    "SmoothQuantLinear",
    "apply_plan",
    "backbone_linears",
    "calibrate",
    "choose_scale",
    "collect_stats",
    "min_cosine",
    "score_agreement",
    "smoothing_scale",
]
