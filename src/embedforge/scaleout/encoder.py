"""An embedder whose ``encode`` runs on a pool of Ray actors: what ``index build|add --engine ray`` hands
to :class:`embedforge.index.Index`.

The index keeps its own resumable, batch-by-batch commits to LanceDB; only the encoding of each
batch is spread: the batch is cut into blocks of ``block_texts`` texts, sent to the actors (each
holds the model, built once from the :class:`~embedforge.spec.ModelSpec`, and encodes with the
library's token-budget batching) with at most ``max_blocks_in_flight`` blocks queued per actor, and
put back in input order. An actor killed mid-batch is restarted by Ray and its blocks retried
(``max_restarts`` / ``max_task_retries``), so the vectors are those of a single process.

Example::

    with ray_cluster(EngineOptions("ray", actors=4)):
        encoder = RayEmbedder(ModelSpec("Qwen/Qwen3-Embedding-0.6B"), actors=4)
        Index.build("corpus.jsonl", "my-index", encoder)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from embedforge.spec import ModelSpec

from .cluster import require_ray
from .embed_job import ActorStats


class _EncoderActor:
    def __init__(self, spec: dict[str, Any]) -> None:
        import ray

        self.embedder = ModelSpec.from_dict(spec).load_embedder()
        ctx = ray.get_runtime_context()
        self.actor_id = ctx.get_actor_id() or "driver"
        self.restarted = bool(ctx.was_current_actor_reconstructed)  # this process replaced a crashed one
        self.pid = os.getpid()

    def describe(self) -> dict[str, Any]:
        e = self.embedder
        return {
            "fingerprint": e.fingerprint,
            "name_or_path": e.name_or_path,
            "max_length": e.max_length,
            "pooling": e.pooling,
            "normalize": e.normalize,
            "hidden_size": e.hidden_size,
            "prompts": dict(e.prompts),
            "query_prompt": e.query_prompt(None),
            "pid": self.pid,
        }

    def query_prompt(self, instruction: str | None) -> str:
        return self.embedder.query_prompt(instruction)

    def encode(self, texts: list[str], prompt: str, dim: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        """The block's vectors, and who encoded it in how long (the driver's per-actor figures)."""
        t0 = time.perf_counter()
        vectors = np.asarray(self.embedder.encode(texts, prompt=prompt, dim=dim))
        who = {"actor": self.actor_id, "pid": self.pid, "restarted": self.restarted}
        return vectors, {**who, "texts": len(texts), "seconds": time.perf_counter() - t0}


class RayEmbedder:
    """The part of :class:`~embedforge.Embedder` the index uses, with ``encode`` spread over Ray actors."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        actors: int = 2,
        threads_per_actor: int = 1,
        block_texts: int = 256,
        max_blocks_in_flight: int = 2,
        max_restarts: int = 3,
        on_block: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if actors < 1 or threads_per_actor < 1 or block_texts < 1 or max_blocks_in_flight < 1:
            raise ValueError(
                "actors, threads_per_actor, block_texts and max_blocks_in_flight must be >= 1, got "
                f"{actors}, {threads_per_actor}, {block_texts}, {max_blocks_in_flight}"
            )
        ray = require_ray()
        self.spec = spec.replace(threads=threads_per_actor)
        self.block_texts = block_texts
        self.window = actors * max_blocks_in_flight
        self.on_block = (
            on_block  # called on the driver with each block's {actor, pid, restarted, texts, seconds}
        )
        self.actor_stats: dict[tuple[str, int], ActorStats] = {}
        actor = ray.remote(_EncoderActor).options(
            num_cpus=threads_per_actor, max_restarts=max_restarts, max_task_retries=max_restarts
        )
        self._actors = [actor.remote(self.spec.to_dict()) for _ in range(actors)]
        info = ray.get(self._actors[0].describe.remote())
        self.fingerprint: str = info["fingerprint"]
        self.name_or_path: str = info["name_or_path"]
        self.max_length: int = info["max_length"]
        self.pooling: str = info["pooling"]
        self.normalize: bool = info["normalize"]
        self.prompts: dict[str, str] = info["prompts"]
        self._hidden: int = info["hidden_size"]
        self._query_prompt: str = info["query_prompt"]

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def query_prompt(self, instruction: str | None = None) -> str:
        if instruction is None:
            return self._query_prompt
        ray = require_ray()
        return str(ray.get(self._actors[0].query_prompt.remote(instruction)))

    def encode(
        self, texts: Sequence[str] | str, *, prompt: str = "", dim: int | None = None, **_: Any
    ) -> np.ndarray:
        """Embed ``prompt + text`` for each text on the actors; (n, dim or hidden) float32 in input order."""
        ray = require_ray()
        single = isinstance(texts, str)
        items = [texts] if isinstance(texts, str) else list(texts)
        blocks = [items[s : s + self.block_texts] for s in range(0, len(items), self.block_texts)]
        results: list[Any] = [None] * len(blocks)
        pending: dict[Any, int] = {}
        nxt = 0
        while nxt < len(blocks) or pending:
            while nxt < len(blocks) and len(pending) < self.window:  # bounded blocks in flight
                worker = self._actors[nxt % len(self._actors)]
                pending[worker.encode.remote(blocks[nxt], prompt, dim)] = nxt
                nxt += 1
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                vectors, who = ray.get(ref)
                results[pending.pop(ref)] = vectors
                self._count(who)
        width = dim or self._hidden
        out = np.concatenate(results) if results else np.empty((0, width), dtype=np.float32)  # (n, width)
        return out[0] if single else out

    def _count(self, who: dict[str, Any]) -> None:
        key = (str(who["actor"]), int(who["pid"]))
        stats = self.actor_stats.setdefault(key, ActorStats(key[0], key[1], bool(who["restarted"])))
        stats.documents += int(who["texts"])
        stats.blocks += 1
        stats.seconds += float(who["seconds"])
        stats.encode_seconds += float(who["seconds"])
        if self.on_block is not None:
            self.on_block(dict(who))

    def summary(self) -> dict[str, Any]:
        """What the actors did so far (JSON): documents, blocks and documents/s per actor process, and
        how many processes replaced a crashed actor (their blocks were retried)."""
        actors = sorted(self.actor_stats.values(), key=lambda a: (a.actor_id, a.pid))
        return {
            "engine": "ray",
            "documents": sum(a.documents for a in actors),
            "blocks": sum(a.blocks for a in actors),
            "actor_restarts": sum(1 for a in actors if a.restarted),
            "actors": [a.to_dict() for a in actors],
        }

    def shutdown(self) -> None:
        """End the actors."""
        ray = require_ray()
        for a in self._actors:
            ray.kill(a)
        self._actors = []


__all__ = ["RayEmbedder"]
