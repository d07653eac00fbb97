"""Former home of the embedding cache; it now lives in :mod:`embedforge.store`.

Kept only as old names for importers outside evaluation (``CacheKey`` is
:class:`~embedforge.store.StoreKey`, ``EmbeddingCache`` is :class:`~embedforge.store.EmbeddingStore`).
New code imports :mod:`embedforge.store`.
"""

from __future__ import annotations

from embedforge.store import EmbeddingStore as EmbeddingCache
from embedforge.store import Encoded, cached_encode
from embedforge.store import StoreKey as CacheKey

__all__ = ["CacheKey", "EmbeddingCache", "Encoded", "cached_encode"]
