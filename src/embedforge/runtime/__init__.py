"""Runtimes: what runs the backbone of an ``Embedder`` or ``Reranker`` (see :mod:`.base`).

``TorchRuntime`` wraps a transformers module and is the only one today; another backend (ONNX
Runtime, int8) implements :class:`Runtime` and is added to :data:`BACKENDS`.
"""

from __future__ import annotations

from .base import PrefixCache, Runtime, torch_module
from .torch import TorchPrefixCache, TorchRuntime

BACKENDS: tuple[str, ...] = ("torch", "torch-int8")  # names accepted by ``from_pretrained(backend=...)``


def check_backend(backend: str) -> str:
    """Return ``backend`` if a runtime of that name exists, else raise naming the ones that do."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not available; choose one of {list(BACKENDS)}")
    return backend


__all__ = [
    "BACKENDS",
    "PrefixCache",
    "Runtime",
    "TorchPrefixCache",
    "TorchRuntime",
    "check_backend",
    "torch_module",
]
