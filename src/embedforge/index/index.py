"""``Index``: a corpus embedded into an on-disk LanceDB table, searched with the model that built it.

Example::

    from embedforge import Embedder
    from embedforge.index import Index

    emb = Embedder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    index = Index.build("scifact/corpus.jsonl", "scifact-index", emb)
    for hit in index.search("What causes scurvy?", k=5):
        print(hit.rank, hit.id, round(hit.score, 3), hit.text[:60])

Building is resumable: documents are embedded ``batch_size`` at a time in corpus order and each
batch is one LanceDB commit, so a build killed at any moment and started again skips the
committed batches (same id, same content hash) and embeds the rest with the same batches,
giving the vectors an uninterrupted build gives. ``manifest.json`` is written last; until then
``build.json`` names the model, and resuming with another model is refused.

Duplicate ids in a corpus: the last record wins (at its position), with a warning naming the ids.
"""

from __future__ import annotations

import inspect
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from embedforge.inputs import check_dim

from . import hits as H
from . import table as tbl
from ._seams import Doc, EmbedderLike, as_embedder, document_prompt, iter_docs, load_embedder, spec_of
from .manifest import (
    BUILD_STATE,
    MANIFEST,
    IndexStateError,
    Manifest,
    check_empty_or_ours,
    read_build_state,
    read_manifest,
    write_json_atomic,
)
from .quantize import CompactVectors, check_quantization, int8_ranges
from .writes import WriteReport, corpus_name, dedupe

DEFAULT_BATCH_SIZE = 4096
SEARCH_MODES = ("auto", "exact", "ann", "int8", "binary")


class Index:
    """An index directory: ``manifest.json`` plus the LanceDB table under ``lance/``."""

    def __init__(self, index_dir: Path, manifest: Manifest, table, embedder: EmbedderLike | None = None):
        self.dir = index_dir
        self.manifest = manifest
        self.table = table
        self._embedder = embedder
        self._load_overrides: dict[str, Any] = {}
        self._vectors: tbl.Vectors | None = None
        self._compact: CompactVectors | None = None
        self.last_write: WriteReport | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike,
        embedder: Any = None,
        *,
        device: str | None = None,
        threads: int | None = None,
        batch_tokens: int | None = None,
    ) -> Index:
        """Open a finished index. The embedder is loaded from the manifest when first needed
        (``device``, ``threads``, ``batch_tokens`` override); one given here must be the same model."""
        path = Path(index_dir)
        manifest = read_manifest(path)
        table = tbl.open_table(path)
        if table is None:
            raise IndexStateError(f"{str(path)!r} has a manifest but no LanceDB table under lance/")
        index = cls(path, manifest, table)
        index._load_overrides = {"device": device, "threads": threads, "batch_tokens": batch_tokens}
        if embedder is not None:
            index._embedder = index._check_model(as_embedder(embedder)[0])
        return index

    def _check_model(self, embedder: EmbedderLike) -> EmbedderLike:
        m = self.manifest
        if embedder.fingerprint != m.fingerprint:
            raise IndexStateError(
                f"index {str(self.dir)!r} was built with model {m.model!r} (fingerprint {m.fingerprint}); "
                f"{embedder.name_or_path!r} has fingerprint {embedder.fingerprint}: its queries would not "
                "match the stored vectors. Search with the model that built the index, or rebuild it"
            )
        return embedder

    @property
    def embedder(self) -> EmbedderLike:
        if self._embedder is None:
            self._embedder = self._check_model(load_embedder(self.manifest.spec, **self._load_overrides))
        return self._embedder

    def __len__(self) -> int:
        return int(self.table.count_rows())

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        corpus: str | os.PathLike | Iterable[Any],
        index_dir: str | os.PathLike,
        embedder: Any,
        *,
        dim: int | None = None,
        field: str | None = None,
        id_field: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        show_progress: bool = True,
        overwrite: bool = False,
        on_commit: Callable[[int], None] | None = None,
    ) -> Index:
        """Embed ``corpus`` into a new index at ``index_dir`` (or resume an interrupted build).

        ``embedder`` is an :class:`~embedforge.Embedder` or a :class:`~embedforge.spec.ModelSpec`;
        ``dim`` truncates to a Matryoshka dimension; ``on_commit(rows_committed)`` is called after
        every committed batch. The build's figures are in ``index.last_write``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = Path(index_dir)
        check_empty_or_ours(path)
        if (path / MANIFEST).exists():
            if not overwrite:
                raise IndexStateError(
                    f"{str(path)!r} already holds an index: use `index add` to update it, or overwrite"
                )
            shutil.rmtree(path)
        emb, spec = as_embedder(embedder)
        hidden = int(emb.hidden_size)
        check_dim(dim, hidden)  # the Embedder's own Matryoshka rule, before anything is written
        width = dim or hidden
        docs, n_dup = dedupe(iter_docs(corpus, field=field, id_field=id_field), corpus_name(corpus))
        meta = tbl.metadata_schema(docs)
        manifest = Manifest(
            model=str(spec_of(emb, spec).get("model", emb.name_or_path)),
            fingerprint=emb.fingerprint,
            dim=width,
            hidden_size=hidden,
            max_length=int(emb.max_length),
            pooling=str(emb.pooling),
            normalize=bool(emb.normalize),
            query_prompt=emb.query_prompt(None),
            document_prompt=document_prompt(emb),
            spec=spec_of(emb, spec),
            text_field=field,
            id_field=id_field,
            metadata_columns=list(meta.names),
            batch_size=batch_size,
        )
        state = read_build_state(path)
        if state is not None and state.settings_key() != manifest.settings_key():
            if not overwrite:
                diff = {
                    k: (v, manifest.settings_key()[k])
                    for k, v in state.settings_key().items()
                    if manifest.settings_key()[k] != v
                }
                raise IndexStateError(
                    f"{str(path)!r} holds an unfinished build with other settings {diff} "
                    "(interrupted, this build): resume with the same model and options, or overwrite"
                )
            shutil.rmtree(path)
            state = None
        if state is None:
            write_json_atomic(path / BUILD_STATE, manifest.to_dict())
        else:
            manifest.created_at = state.created_at
        schema = tbl.table_schema(width, meta)
        table = tbl.open_table(path) or tbl.create_table(path, schema)
        if table.schema != schema:
            raise IndexStateError(
                f"{str(path)!r}: the table of the unfinished build has columns {table.schema.names}, this "
                f"corpus needs {schema.names}: the corpus changed; overwrite to start again"
            )
        index = cls(path, manifest, table, emb)
        report = index._write(docs, n_dup, show_progress, on_commit, build=True)
        manifest.updated_at = time.time()
        write_json_atomic(path / MANIFEST, manifest.to_dict())
        (path / BUILD_STATE).unlink(missing_ok=True)
        index.last_write = report
        return index

    def add(
        self,
        corpus: str | os.PathLike | Iterable[Any],
        *,
        field: str | None = None,
        id_field: str | None = None,
        show_progress: bool = True,
    ) -> WriteReport:
        """Upsert documents by id: new ids are added, changed ones replaced, unchanged ones skipped."""
        field = field if field is not None else self.manifest.text_field
        id_field = id_field if id_field is not None else self.manifest.id_field
        docs, n_dup = dedupe(iter_docs(corpus, field=field, id_field=id_field), corpus_name(corpus))
        self.embedder  # noqa: B018 - load and check the model before writing anything
        report = self._write(docs, n_dup, show_progress, None, build=False)
        self.manifest.updated_at = time.time()
        write_json_atomic(self.dir / MANIFEST, self.manifest.to_dict())
        self.last_write = report
        return report

    def _write(
        self,
        docs: list[Doc],
        n_dup: int,
        show_progress: bool,
        on_commit: Callable[[int], None] | None,
        *,
        build: bool,
    ) -> WriteReport:
        t0 = time.perf_counter()
        emb, m = self.embedder, self.manifest
        prompt = m.document_prompt
        schema = self.table.schema
        have = tbl.scan(self.table, ["id", "content_hash"])
        existing = dict(zip(have["id"].to_pylist(), have["content_hash"].to_pylist(), strict=True))
        hashes = [tbl.content_hash(d, prompt) for d in docs]
        embedded = unchanged = replaced = 0
        embed_s = 0.0
        dim_arg = None if m.dim == m.hidden_size else m.dim
        bar = tqdm(total=len(docs), desc="index", unit="doc", disable=not show_progress)
        # the bar moves per model batch where the encoder can advance it (Embedder.encode), else per commit
        per_batch = "progress" in inspect.signature(emb.encode).parameters
        progress_kw: dict[str, Any] = {"progress": bar} if per_batch else {}
        try:
            for s in range(0, len(docs), m.batch_size):
                batch, bh = docs[s : s + m.batch_size], hashes[s : s + m.batch_size]
                todo = [i for i, d in enumerate(batch) if existing.get(d.id) != bh[i]]
                unchanged += len(batch) - len(todo)
                if todo:
                    part = [batch[i] for i in todo]
                    t1 = time.perf_counter()
                    vecs = emb.encode([d.full_text for d in part], prompt=prompt, dim=dim_arg, **progress_kw)
                    embed_s += time.perf_counter() - t1
                    data = tbl.rows(part, [bh[i] for i in todo], np.asarray(vecs), schema)
                    upsert = [d.id for d in part if d.id in existing]
                    if upsert:  # one commit: the old rows go, the new ones come
                        self.table.merge_insert(
                            "id"
                        ).when_matched_update_all().when_not_matched_insert_all().execute(data)
                    else:
                        self.table.add(data)
                    replaced += len(upsert)
                    embedded += len(part)
                    existing.update({d.id: bh[i] for i, d in zip(todo, part, strict=True)})
                    if on_commit is not None:
                        on_commit(s + len(batch))
                bar.update(len(batch) - (len(todo) if per_batch else 0))
        finally:
            bar.close()
        removed = 0
        if build:  # rows of an interrupted build whose id is no longer in the corpus
            stale = sorted(set(existing) - {d.id for d in docs})
            if stale:
                tbl.delete_ids(self.table, stale)
                removed = len(stale)
        self._invalidate()
        seconds = time.perf_counter() - t0
        return WriteReport(
            index=str(self.dir),
            documents=len(docs),
            embedded=embedded,
            unchanged=unchanged,
            replaced=replaced,
            removed=removed,
            duplicates=n_dup,
            rows=len(self),
            seconds=seconds,
            docs_per_second=embedded / seconds if seconds > 0 else 0.0,
            embed_seconds=embed_s,
        )

    def delete(self, ids: Sequence[str]) -> dict[str, Any]:
        """Remove documents by id; returns how many were deleted and which ids were not there."""
        if isinstance(ids, str) or not all(isinstance(i, str) for i in ids):
            raise TypeError("ids must be a sequence of str")
        ids = list(dict.fromkeys(ids))
        have = set(tbl.scan(self.table, ["id"])["id"].to_pylist())
        present = [i for i in ids if i in have]
        tbl.delete_ids(self.table, present)
        self._invalidate()
        self.manifest.updated_at = time.time()
        write_json_atomic(self.dir / MANIFEST, self.manifest.to_dict())
        return {"deleted": len(present), "missing": [i for i in ids if i not in have], "rows": len(self)}

    # ------------------------------------------------------------------ searching
    def _invalidate(self) -> None:
        self._vectors = None
        self._compact = None

    def vectors(self, *, full: bool = True) -> tbl.Vectors:
        """Every row's id, row id and (``full``) vector in table order, cached until the table changes."""
        self.table.checkout_latest()
        stale = self._vectors is None or self._vectors.version != self.table.version
        if stale:
            self._compact = None
        if stale or (full and self._vectors is not None and self._vectors.matrix is None):
            self._vectors = tbl.load_vectors(self.table, self.manifest.dim)
        assert self._vectors is not None
        return self._vectors

    def matrix(self) -> np.ndarray:
        """(rows, dim) float32: every stored vector in table order."""
        m = self.vectors(full=True).matrix
        assert m is not None
        return m

    def compact(self, kind: str) -> CompactVectors:
        """The quantised codes of every row; the float vectors are then dropped from memory (the
        rescoring reads the candidates' vectors from disk)."""
        self.vectors(full=False)  # drops the codes of an older table version
        if self._compact is None or self._compact.kind != kind:
            matrix = self.matrix()
            ranges = None
            if kind == "int8":
                r = self.manifest.int8_ranges
                ranges = np.asarray(r, np.float32) if r is not None else int8_ranges(matrix)
            self._compact = CompactVectors.from_vectors(kind, matrix, ranges)
        self.vectors(full=False).matrix = None
        return self._compact

    def encode_queries(self, queries: Sequence[str], instruction: str | None = None) -> np.ndarray:
        """Queries embedded exactly as the index's documents expect them."""
        emb, m = self.embedder, self.manifest
        dim_arg = None if m.dim == m.hidden_size else m.dim
        return np.asarray(emb.encode(list(queries), prompt=emb.query_prompt(instruction), dim=dim_arg))

    def search(
        self,
        query: str | Sequence[str],
        k: int = 10,
        *,
        instruction: str | None = None,
        where: str | None = None,
        rerank: Any = None,
        rerank_top: int = 100,
        rerank_instruction: str | None = None,
        mode: str = "auto",
        rescore_multiplier: int = 4,
        nprobes: int | None = None,
        refine_factor: int | None = None,
        payload: bool = True,
    ) -> list[H.Hit] | list[list[H.Hit]]:
        """Top ``k`` documents of one query (a list of hits) or of each of several queries.

        ``where`` is a SQL filter on metadata columns (``"year > 2015"``). ``rerank`` (a Reranker)
        rescores the first ``rerank_top`` hits of each query. ``mode``: ``auto`` follows
        ``optimize`` (quantised, else ANN, else exact), or ``exact`` / ``ann`` / ``int8`` / ``binary``.
        ``payload=False`` returns ids and scores only (faster for evaluation runs).
        """
        single = isinstance(query, str)
        queries: list[str] = [query] if isinstance(query, str) else list(query)
        if not queries or not all(isinstance(q, str) for q in queries):
            raise TypeError("query must be a str or a non-empty sequence of str")
        q = self.encode_queries(queries, instruction)
        first = max(k, rerank_top) if rerank is not None else k
        found = self.search_vectors(
            q,
            first,
            where=where,
            mode=mode,
            rescore_multiplier=rescore_multiplier,
            nprobes=nprobes,
            refine_factor=refine_factor,
            payload=payload or rerank is not None,
        )
        if rerank is not None:
            r_instr = rerank_instruction if rerank_instruction is not None else instruction
            found = H.rerank(rerank, queries, found, top=rerank_top, k=k, instruction=r_instr)
        return found[0] if single else found

    def search_vectors(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        where: str | None = None,
        mode: str = "auto",
        rescore_multiplier: int = 4,
        nprobes: int | None = None,
        refine_factor: int | None = None,
        payload: bool = True,
    ) -> list[list[H.Hit]]:
        """Search with query vectors (n_query, dim) already embedded."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode {mode!r} is not one of {list(SEARCH_MODES)}")
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.manifest.dim:
            raise ValueError(
                f"query embeddings have shape {tuple(q.shape)}; this index holds {self.manifest.dim}-d "
                f"vectors, so queries must be (n, {self.manifest.dim})"
            )
        tbl.check_where(self.table, where)
        m = self.manifest
        if mode == "auto":
            mode = m.quantization or ("ann" if m.ann else "exact")
        vectors = self.vectors(full=mode == "exact")
        rows = None
        if where is not None:
            match = tbl.scan(self.table, ["id"], where, row_ids=True)["_rowid"].to_numpy()
            rows = np.nonzero(np.isin(vectors.row_ids, match))[0]
        if mode == "exact":
            cand = H.exact(q, self.matrix(), k, rows)
        elif mode == "ann":
            if not m.ann:
                raise ValueError(
                    "this index has no ANN index: run `embedforge index optimize --ann ...` first"
                )
            cand = H.ann(
                self.table,
                vectors,
                q,
                k,
                where,
                metric=m.metric,
                nprobes=nprobes,
                refine_factor=refine_factor,
            )
        else:
            compact = self.compact(mode)
            cand = H.quantized(self.table, vectors, compact, q, k, rows, rescore_multiplier)
        return H.to_hits(self.table, vectors, cand, payload=payload)

    # ------------------------------------------------------------------ maintenance
    def optimize(
        self,
        *,
        ann: str | None = None,
        quantize: str | None = None,
        num_partitions: int | None = None,
        num_sub_vectors: int | None = None,
    ) -> dict[str, Any]:
        """Compact the table; build an ANN index (``ann``) and/or set the quantised search
        (``quantize``: int8 | binary | none)."""
        from .maintenance import ann_index, compact_table

        out: dict[str, Any] = {"compaction": compact_table(self.table)}
        if ann is not None:
            self.manifest.ann = ann_index(
                self.table, ann, self.manifest.metric, num_partitions, num_sub_vectors
            )
            out["ann"] = self.manifest.ann
        if quantize is not None:
            kind = None if quantize == "none" else check_quantization(quantize)
            self.manifest.quantization = kind
            self._invalidate()
            if kind == "int8":
                self.manifest.int8_ranges = int8_ranges(self.matrix()).tolist()
            out["quantization"] = kind
        self._invalidate()
        self.manifest.updated_at = time.time()
        write_json_atomic(self.dir / MANIFEST, self.manifest.to_dict())
        return out

    def info(self) -> dict[str, Any]:
        """Rows, model, dimensions, size on disk, ANN and quantisation state."""
        from .maintenance import info

        return info(self)
