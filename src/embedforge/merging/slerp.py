"""Interpolation of two tensors: spherical (slerp) and linear. Pure functions, no I/O."""

from __future__ import annotations

import math

import torch

PARALLEL_EPS = 1e-6  # |cos| above 1 - eps: the tensors are (anti)parallel and slerp falls back to linear


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """``(1 - t) * a + t * b``, computed in float32 or wider and returned in ``a``'s dtype."""
    wide = torch.promote_types(a.dtype, torch.float32)
    return ((1.0 - t) * a.to(wide) + t * b.to(wide)).to(a.dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, *, eps: float = PARALLEL_EPS) -> torch.Tensor:
    r"""Spherical linear interpolation of two same-shaped tensors, treated as flat vectors.

    With ``cos(omega) = <a, b> / (|a| |b|)``::

        slerp(a, b, t) = sin((1 - t) omega) / sin(omega) * a  +  sin(t omega) / sin(omega) * b

    so ``slerp(a, b, 0) = a``, ``slerp(a, b, 1) = b``, ``slerp(a, b, t) = slerp(b, a, 1 - t)``, and
    for orthogonal ``a``, ``b`` of equal norm r the result keeps norm r for every t (linear
    interpolation would shrink it to ``r * sqrt((1-t)^2 + t^2)``). Near-parallel tensors
    (``|cos| > 1 - eps``) and zero tensors fall back to :func:`lerp`, where the formula is 0/0.
    Non-floating tensors (integer buffers) must be equal and are returned unchanged.
    """
    if a.shape != b.shape:
        raise ValueError(f"cannot interpolate tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    if not a.is_floating_point():
        if not torch.equal(a, b):
            raise ValueError("non-floating tensors differ between checkpoints; they cannot be interpolated")
        return a.clone()
    if t == 0.0:
        return a.clone()
    if t == 1.0:
        return b.to(a.dtype).clone()
    x, y = a.double().flatten(), b.double().flatten()
    nx, ny = x.norm(), y.norm()
    if nx == 0 or ny == 0:
        return lerp(a, b, t)
    cos = torch.clamp((x @ y) / (nx * ny), -1.0, 1.0).item()
    if abs(cos) > 1.0 - eps:
        return lerp(a, b, t)
    omega = math.acos(cos)
    sin = math.sin(omega)
    out = (math.sin((1.0 - t) * omega) / sin) * x + (math.sin(t * omega) / sin) * y
    return out.view(a.shape).to(a.dtype)
