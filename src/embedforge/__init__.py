"""embedforge: the Qwen3 Embedding system end to end — faithful, fast embedding and reranking."""

from typing import TYPE_CHECKING, Any

from .embedder import Embedder
from .loading import CheckpointError
from .reranker import RankedDocument, Reranker
from .runtime import Runtime, TorchRuntime
from .spec import ModelSpec

if TYPE_CHECKING:  # heavy optional parts, imported on first use (see __getattr__)
    from .engine import Engine
    from .index import Index

__version__ = "0.1.0"

_LAZY = {"Engine": "embedforge.engine", "Index": "embedforge.index"}


def __getattr__(name: str) -> Any:
    """``embedforge.Index`` and ``embedforge.Engine`` without importing LanceDB or the engine upfront."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embedforge' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "Embedder",
    "Engine",
    "Index",
    "ModelSpec",
    "RankedDocument",
    "Reranker",
    "Runtime",
    "TorchRuntime",
    "__version__",
]
