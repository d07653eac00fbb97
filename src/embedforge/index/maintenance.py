"""Compaction, ANN indexes and the ``info`` summary of an index."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .index import Index

# user-facing name -> lancedb.index config class (the vector index types LanceDB 0.40 offers)
ANN_TYPES = {
    "ivf_flat": "IvfFlat",
    "ivf_sq": "IvfSq",
    "ivf_pq": "IvfPq",
    "ivf_rq": "IvfRq",  # RaBitQ: 1 bit per dimension
    "hnsw": "IvfHnswSq",
    "ivf_hnsw_sq": "IvfHnswSq",
    "ivf_hnsw_pq": "IvfHnswPq",
    "ivf_hnsw_flat": "IvfHnswFlat",
}
ANN_CHOICES = (*ANN_TYPES, "none")


def dir_size(path: Path) -> int:
    return sum((Path(root) / f).stat().st_size for root, _, files in os.walk(path) for f in files)


def compact_table(table) -> dict[str, Any]:
    """Merge small fragments (one per committed batch) and drop files of old versions."""
    before = table.stats()["fragment_stats"]["num_fragments"]
    table.optimize()
    return {"fragments_before": before, "fragments_after": table.stats()["fragment_stats"]["num_fragments"]}


def ann_index(
    table, kind: str, metric: str, num_partitions: int | None, num_sub_vectors: int | None
) -> dict[str, Any] | None:
    """Build (or with ``none`` drop) the vector index; returns what the manifest records."""
    import lancedb.index as li

    if kind not in ANN_CHOICES:
        raise ValueError(f"ANN index {kind!r} is not one of {list(ANN_CHOICES)}")
    if kind == "none":
        for idx in table.list_indices():
            if idx.columns == ["vector"]:
                table.drop_index(idx.name)
        return None
    n = table.count_rows()
    if n < 256:
        raise ValueError(f"an ANN index needs at least 256 rows to train, this index has {n}")
    params: dict[str, Any] = {"distance_type": metric}
    if num_partitions is not None:
        params["num_partitions"] = num_partitions
    if num_sub_vectors is not None:
        if "Pq" not in ANN_TYPES[kind]:
            raise ValueError(f"num_sub_vectors applies to PQ indexes only, not {kind!r}")
        params["num_sub_vectors"] = num_sub_vectors
    config = getattr(li, ANN_TYPES[kind])(**params)
    table.create_index("vector", config=config, replace=True)
    return {
        "type": kind,
        "lancedb": ANN_TYPES[kind],
        **{k: v for k, v in params.items() if k != "distance_type"},
    }


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


def info(index: Index) -> dict[str, Any]:
    """Everything ``embedforge index info`` prints."""
    m, table = index.manifest, index.table
    table.checkout_latest()
    stats = table.stats()
    indices = []
    for idx in table.list_indices():
        s = table.index_stats(idx.name)
        indices.append(
            {
                "name": idx.name,
                "type": idx.index_type,
                "columns": list(idx.columns),
                "indexed_rows": getattr(s, "num_indexed_rows", None),
                "unindexed_rows": getattr(s, "num_unindexed_rows", None),
            }
        )
    return {
        "index": str(index.dir),
        "rows": int(stats["num_rows"]),
        "model": m.model,
        "fingerprint": m.fingerprint,
        "dim": m.dim,
        "hidden_size": m.hidden_size,
        "metric": m.metric,
        "normalize": m.normalize,
        "pooling": m.pooling,
        "max_length": m.max_length,
        "query_prompt": m.query_prompt,
        "document_prompt": m.document_prompt,
        "metadata_columns": m.metadata_columns,
        "quantization": m.quantization,
        "ann": m.ann,
        "indices": indices,
        "size_bytes": dir_size(index.dir),
        "table_bytes": int(stats["total_bytes"]),
        "fragments": int(stats["fragment_stats"]["num_fragments"]),
        "version": int(table.version),
        "created_at": _iso(m.created_at),
        "updated_at": _iso(m.updated_at),
    }
