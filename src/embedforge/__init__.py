"""embedforge: the Qwen3 Embedding system end to end — faithful, fast embedding and reranking."""

from .embedder import Embedder
from .loading import CheckpointError
from .reranker import RankedDocument, Reranker

__version__ = "0.1.0"

__all__ = ["CheckpointError", "Embedder", "RankedDocument", "Reranker", "__version__"]
