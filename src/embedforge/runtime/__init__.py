"""Runtimes: what runs the backbone of an ``Embedder`` or ``Reranker`` (see :mod:`.base`).

``TorchRuntime`` wraps a transformers module; ``torch-int8`` (:mod:`.int8`) is a TorchRuntime over
int8 linears; ``onnx`` and ``onnx-int8`` (:mod:`.onnx`) run our own ONNX graph on ONNX Runtime
(imported on first use: ``pip install 'embedforge[onnx]'``). A new backend implements
:class:`Runtime` and is added to :data:`BACKENDS`.
"""

from __future__ import annotations

from .base import PrefixCache, Runtime, torch_module
from .torch import TorchPrefixCache, TorchRuntime

BACKENDS: tuple[str, ...] = (
    "torch",
    "torch-int8",
    "onnx",
    "onnx-int8",
)  # names accepted by ``from_pretrained(backend=...)``


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
