"""Index and search: a corpus embedded into an on-disk LanceDB table, searched, reranked, kept current.

``Index.build(corpus, dir, embedder)``, ``Index.open(dir)``, ``index.add(corpus)`` (upsert by id),
``index.delete(ids)``, ``index.search(query, k, where=..., rerank=...)``, ``index.optimize(...)``,
``index.info()``; :func:`evaluate_index` scores an index on a BEIR directory.
"""

from .evaluate import evaluate_index, read_trec_run, write_trec_run
from .hits import Hit
from .index import Index
from .manifest import IndexStateError, Manifest
from .writes import DuplicateIdWarning, WriteReport

__all__ = [
    "DuplicateIdWarning",
    "Hit",
    "Index",
    "IndexStateError",
    "Manifest",
    "WriteReport",
    "evaluate_index",
    "read_trec_run",
    "write_trec_run",
]
