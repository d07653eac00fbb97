"""Embed a corpus file on a Ray cluster with Ray Data: read in parts, a pool of model actors, committed output.

The pipeline (one Ray Data job, streamed)::

    corpus file --plan_parts--> read tasks (one per part, the corpus reader's rules)
        --map_batches(_EmbedActor, N actors, T CPUs each)--> block files  --driver--> manifest, final file

- **Reading**: the driver cuts the file into parts once (a byte scan; no parsing), and each Ray read
  task reads one part with :func:`embedforge.scaleout.parts.read_part`, so ids and the title+text
  join are exactly those of ``embed --engine local``.
- **Embedding**: each actor builds its :class:`~embedforge.Embedder` once from the
  :class:`~embedforge.spec.ModelSpec` (``threads`` = threads per actor, set with
  ``torch.set_num_threads`` at load) and embeds a block with ``Embedder.encode`` — the library's own
  token-budget batching — then writes the block's vectors atomically to the parts folder.
- **Backpressure**: at most ``max_blocks_in_flight`` blocks are queued per actor and read tasks run
  at most ``actors`` at a time; Ray Data's streaming executor pauses reading while they are full, so
  memory stays bounded for any corpus size.
- **Fault tolerance**: actors restart (``max_restarts``) and their unfinished blocks are retried
  (``max_task_retries``); a retried block rewrites the same file, so every document is stored once.
  The driver records a part in ``manifest.json`` once all its blocks are written; a job killed and
  started again skips the parts recorded there.
- **Output**: the final ``.parquet`` (``id`` + ``embedding``) or ``.npy`` is merged from the parts in
  corpus order, as the single-process ``embed`` writes it.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from embedforge.spec import ModelSpec

from .cluster import EngineOptions, ray_cluster, require_ray
from .parts import (
    PartSpec,
    corpus_has_ids,
    input_identity,
    merge_parts,
    open_manifest,
    parts_dir_of,
    plan_parts,
    read_part,
    write_block,
)

OUTPUTS = (".parquet", ".npy")
SIDES = ("document", "query")


@dataclass(frozen=True)
class EmbedJobConfig:
    """What to embed and how; every field that changes the vectors is part of the resume check."""

    spec: ModelSpec
    side: str = "document"  # "document" (raw text, or the checkpoint's document prompt) or "query"
    instruction: str | None = None  # query instruction (or the instructed prompt of a symmetric task)
    dim: int | None = None  # Matryoshka dimension
    field: str | None = None  # text field of JSONL / Parquet rows
    id_field: str | None = None
    part_rows: int = 1024  # records per part (one read task, one commit)
    max_blocks_in_flight: int = 2  # per actor
    max_retries: int = 3  # actor restarts and block retries after a crash
    show_progress: bool = True

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"side must be one of {list(SIDES)}, got {self.side!r}")
        for name in ("part_rows", "max_blocks_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def settings(self, corpus: Path) -> dict[str, Any]:
        """What a resumed job must share with the one that wrote the parts."""
        spec = {
            k: v for k, v in self.spec.to_dict().items() if k not in ("device", "threads", "batch_tokens")
        }
        return {
            "input": input_identity(corpus),
            "spec": spec,
            "side": self.side,
            "instruction": self.instruction,
            "dim": self.dim,
            "field": self.field,
            "id_field": self.id_field,
            "part_rows": self.part_rows,
        }


@dataclass
class ActorStats:
    """What one actor (one process; a restarted actor counts anew) embedded."""

    actor_id: str
    pid: int
    restarted: bool  # this process replaced a crashed one
    documents: int = 0
    blocks: int = 0
    seconds: float = 0.0  # in the block function: read the block, encode, write
    encode_seconds: float = 0.0

    @property
    def docs_per_second(self) -> float:
        return self.documents / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "docs_per_second": self.docs_per_second}


@dataclass
class EmbedJobSummary:
    """The JSON summary of a job (``to_dict``)."""

    output: str
    documents: int  # in the output
    dim: int
    parts_total: int
    parts_skipped: int  # committed by an earlier run
    parts_done: int  # committed now
    seconds: float
    docs_per_second: float  # documents embedded now / seconds
    blocks: int
    overhead_per_block_s: float  # block time not spent encoding (reading, arrow, writing)
    actor_restarts: int  # actor processes that replaced a crashed one (their blocks were retried)
    actors: list[ActorStats] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["actors"] = [a.to_dict() for a in self.actors]
        return out


def _read_part_block(path: str, part: PartSpec, field: str | None, id_field: str | None) -> Iterator[Any]:
    """A Ray read task: one part as one Arrow block (part, row, id, text)."""
    import pyarrow as pa

    docs = read_part(path, part, field=field, id_field=id_field)
    yield pa.table(
        {
            "part": pa.array([part.index] * len(docs), pa.int64()),
            "row": pa.array(range(part.first_row, part.first_row + len(docs)), pa.int64()),
            "id": pa.array([d.id for d in docs], pa.string()),
            "text": pa.array([d.full_text for d in docs], pa.string()),
        }
    )


def _datasource(path: Path, parts: list[PartSpec], field: str | None, id_field: str | None) -> Any:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class CorpusParts(Datasource):
        """Each read task reads one part of the corpus file."""

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[ReadTask]:
            return [
                ReadTask(
                    functools.partial(_read_part_block, str(path), part, field, id_field),
                    BlockMetadata(num_rows=part.rows, size_bytes=None, exec_stats=None, input_files=None),
                )
                for part in parts
            ]

    return CorpusParts()


class _EmbedActor:
    """One model replica: loads the embedder once, embeds whole blocks, writes them to the parts folder."""

    def __init__(
        self, spec: dict[str, Any], side: str, instruction: str | None, dim: int | None, folder: str
    ):
        import ray

        self.embedder = ModelSpec.from_dict(spec).load_embedder()
        self.prompt = self.embedder.side_prompt(side, instruction)
        self.dim = dim
        self.folder = Path(folder)
        ctx = ray.get_runtime_context()
        self.actor_id = ctx.get_actor_id() or "driver"
        self.restarted = bool(ctx.was_current_actor_reconstructed)
        self.pid = os.getpid()

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import pyarrow as pa

        t0 = time.perf_counter()
        parts = batch.column("part").to_numpy()
        rows = batch.column("row").to_numpy()
        ids = batch.column("id").to_pylist()
        texts = batch.column("text").to_pylist()
        out: dict[str, list[Any]] = {k: [] for k in ("part", "first_row", "rows", "file", "encode_s")}
        starts = [0] + [i for i in range(1, len(parts)) if parts[i] != parts[i - 1]] + [len(parts)]
        for a, b in zip(starts[:-1], starts[1:], strict=True):  # one group per part (a block holds one)
            t1 = time.perf_counter()
            vectors = np.asarray(self.embedder.encode(texts[a:b], prompt=self.prompt, dim=self.dim))
            out["encode_s"].append(time.perf_counter() - t1)
            out["file"].append(write_block(self.folder, int(parts[a]), int(rows[a]), ids[a:b], vectors))
            out["part"].append(int(parts[a]))
            out["first_row"].append(int(rows[a]))
            out["rows"].append(b - a)
        n = len(out["part"])
        table = pa.table(out)
        seconds = time.perf_counter() - t0
        extra = {
            "actor": [self.actor_id] * n,
            "pid": [self.pid] * n,
            "restarted": [self.restarted] * n,
            "seconds": [seconds / max(n, 1)] * n,
        }
        for name, values in extra.items():
            table = table.append_column(name, pa.array(values))
        return table


def _restart_args(ray: Any, max_retries: int) -> dict[str, int]:
    """The bound on actor restarts and block retries, for ``map_batches``.

    Ray Data takes them only through ``**ray_remote_args``, deprecated in 2.60 and removed in 2.64,
    without a named replacement. Until then they go there (the caller silences that deprecation
    warning: it is ours to know, not the user's); from 2.64 on Ray Data's own default applies:
    restart and retry without limit.
    """
    from packaging.version import Version

    if Version(ray.__version__) >= Version("2.64"):
        return {}
    return {"max_restarts": max_retries, "max_task_retries": max_retries}


BlockCallback = Callable[[dict[str, Any]], None]


def _check_output(output: Path) -> None:
    if output.suffix not in OUTPUTS:
        raise ValueError(f"unsupported output {str(output)!r}: use one of {', '.join(OUTPUTS)}")
    if output.is_dir():
        raise ValueError(f"output {str(output)!r} is a directory; give a file name")


def run_embed_job(
    corpus: str | os.PathLike,
    output: str | os.PathLike,
    config: EmbedJobConfig,
    options: EngineOptions | None = None,
    *,
    on_block: BlockCallback | None = None,
    keep_parts: bool = False,
) -> EmbedJobSummary:
    """Embed ``corpus`` into ``output`` (``.parquet`` or ``.npy``) on Ray; resumes a killed job.

    ``options`` says where (``address``) and how wide (``actors``, ``threads_per_actor``); an
    already initialised Ray is used as it is. ``on_block(row)`` is called on the driver for every
    block written (its part, rows, actor id and pid). The parts folder is removed after the merge
    unless ``keep_parts``.
    """
    options = options or EngineOptions(engine="ray")
    path, out = Path(corpus), Path(output)
    _check_output(out)
    parts = plan_parts(path, config.part_rows)
    spec = config.spec.replace(threads=options.threads_per_actor)
    folder = parts_dir_of(out)
    manifest = open_manifest(folder, config.settings(path), len(parts))
    todo = [p for p in parts if not manifest.is_done(p.index)]
    skipped = len(parts) - len(todo)
    actors: dict[tuple[str, int], ActorStats] = {}
    blocks = 0
    encode_s = block_s = 0.0
    t0 = time.perf_counter()
    if todo:
        by_index = {p.index: p for p in todo}
        written: dict[int, dict[int, tuple[str, int]]] = {p.index: {} for p in todo}
        with (
            ray_cluster(options) as ray,
            tqdm(
                total=sum(p.rows for p in parts),
                initial=sum(p.rows for p in parts) - sum(p.rows for p in todo),
                desc="embed (ray)",
                unit="doc",
                disable=not config.show_progress,
            ) as bar,
        ):
            data_ctx = ray.data.DataContext.get_current()
            data_ctx.enable_progress_bars = config.show_progress
            data_ctx.verbose_progress = False
            ds = ray.data.read_datasource(
                _datasource(path, todo, config.field, config.id_field),
                num_cpus=0,  # parsing is light next to the model; the actors hold the CPUs
                concurrency=max(1, options.actors),
                override_num_blocks=len(todo),
            )
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", DeprecationWarning)
                ds = ds.map_batches(
                    _EmbedActor,
                    fn_constructor_kwargs={
                        "spec": spec.to_dict(),
                        "side": config.side,
                        "instruction": config.instruction,
                        "dim": config.dim,
                        "folder": str(folder),
                    },
                    batch_size=None,  # one block (one part) per call
                    batch_format="pyarrow",
                    compute=ray.data.ActorPoolStrategy(
                        size=options.actors, max_tasks_in_flight_per_actor=config.max_blocks_in_flight
                    ),
                    num_cpus=options.threads_per_actor,
                    **_restart_args(ray, config.max_retries),
                )
            for row in ds.iter_rows():
                blocks += 1
                part = by_index[int(row["part"])]
                key = (str(row["actor"]), int(row["pid"]))
                stats = actors.setdefault(key, ActorStats(key[0], key[1], bool(row["restarted"])))
                stats.documents += int(row["rows"])
                stats.blocks += 1
                stats.seconds += float(row["seconds"])
                stats.encode_seconds += float(row["encode_s"])
                encode_s += float(row["encode_s"])
                block_s += float(row["seconds"])
                got = written[part.index]
                got[int(row["first_row"])] = (str(row["file"]), int(row["rows"]))
                if sum(n for _, n in got.values()) == part.rows:
                    manifest.commit(folder, part.index, [f for f, _ in got.values()])
                    bar.update(part.rows)
                if on_block is not None:
                    on_block(dict(row))
    seconds = time.perf_counter() - t0
    missing = [p.index for p in parts if not manifest.is_done(p.index)]
    if missing:
        raise RuntimeError(f"the job ended with parts {missing[:10]} unwritten; run it again to resume")
    merged = merge_parts(
        folder,
        manifest,
        parts,
        out,
        corpus=path,
        with_ids=corpus_has_ids(path),
        field=config.field,
        id_field=config.id_field,
    )
    if not keep_parts:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    embedded = sum(p.rows for p in todo)
    return EmbedJobSummary(
        output=str(out),
        documents=merged.rows,
        dim=merged.dim,
        parts_total=len(parts),
        parts_skipped=skipped,
        parts_done=len(todo),
        seconds=seconds,
        docs_per_second=embedded / seconds if seconds > 0 else 0.0,
        blocks=blocks,
        overhead_per_block_s=(block_s - encode_s) / blocks if blocks else 0.0,
        actor_restarts=sum(1 for a in actors.values() if a.restarted),
        actors=sorted(actors.values(), key=lambda a: (a.actor_id, a.pid)),
    )


__all__ = ["ActorStats", "EmbedJobConfig", "EmbedJobSummary", "require_ray", "run_embed_job"]
