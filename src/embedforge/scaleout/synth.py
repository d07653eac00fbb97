"""The LLM fan-out of synthesis on Ray Core: requests spread over several OpenAI-compatible endpoints.

:class:`RayFanoutBackend` is an :class:`~embedforge.synthesis.llm.LLMBackend`, so the synthesis
pipeline runs unchanged: it keeps the one keyed, append-only store (the single source of truth,
written by the driver only), skips finished keys on a rerun and retries failures. Each request is
sent to one Ray actor per endpoint (:class:`_EndpointWorker`, an async actor holding an
:class:`~embedforge.synthesis.llm.OpenAIBackend` with its retries and backoff), chosen as the
endpoint with the fewest requests in flight; at most ``concurrency`` requests are in flight per
endpoint. Actors may live on other nodes (close to their endpoint); a crashed actor is restarted
and its requests retried (``max_restarts`` / ``max_task_retries``).

Example::

    backend = RayFanoutBackend(["http://gpu1:8000/v1", "http://gpu2:8000/v1"], "Qwen/Qwen3-32B",
                               concurrency=64)
    report = synthesize("retrieval", docs, backend, "out.jsonl", cfg, personas=personas)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any

from embedforge.synthesis.llm import (
    BackendStats,
    LLMError,
    LLMFatalError,
    Message,
    OpenAIBackend,
    RetryPolicy,
)

from .cluster import require_ray


class _EndpointWorker:
    """One endpoint's client, in a Ray actor: ``complete`` answers ``("ok", text)`` or
    ``("error" | "fatal", message)`` (the driver raises the library's error types from these)."""

    def __init__(self, base_url: str, model: str, options: dict[str, Any]) -> None:
        retry = RetryPolicy(**options.pop("retry"))
        self.backend = OpenAIBackend(base_url, model, retry=retry, **options)

    async def complete(self, messages: list[Message], temperature: float, max_tokens: int) -> tuple[str, str]:
        try:
            return "ok", await self.backend.complete(messages, temperature=temperature, max_tokens=max_tokens)
        except LLMFatalError as e:
            return "fatal", str(e)
        except LLMError as e:
            return "error", str(e)

    def stats(self) -> dict[str, int]:
        return asdict(self.backend.stats)


class RayFanoutBackend:
    """An LLM backend over several OpenAI-compatible endpoints, one Ray actor each."""

    def __init__(
        self,
        base_urls: Sequence[str],
        model_name: str,
        *,
        api_key: str | None = None,
        concurrency: int = 16,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        seed: int = 0,
        extra_body: dict | None = None,
        max_restarts: int = 3,
    ) -> None:
        urls = [u.strip() for u in base_urls if u.strip()]
        if not urls:
            raise ValueError("give at least one endpoint base URL")
        if len(set(urls)) != len(urls):
            raise ValueError(f"endpoint URLs repeat: {urls}")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must start with http:// or https://")
        if concurrency < 1:
            raise ValueError(f"concurrency (per endpoint) must be >= 1, got {concurrency}")
        ray = require_ray()
        self.base_urls = urls
        self.model_name = model_name
        self.per_endpoint = concurrency
        self.concurrency = concurrency * len(urls)  # the pipeline's number of workers
        self.stats = BackendStats()
        self.endpoint_stats: dict[str, dict[str, int]] = {}
        retry = retry or RetryPolicy()
        actor = ray.remote(_EndpointWorker).options(
            num_cpus=0,  # waits on the network; CPUs stay with the models
            max_concurrency=concurrency + 2,
            max_restarts=max_restarts,
            max_task_retries=max_restarts,
        )
        self._workers = [
            actor.remote(
                url,
                model_name,
                {
                    "api_key": api_key,
                    "concurrency": concurrency,
                    "timeout": timeout,
                    "retry": asdict(retry),
                    "seed": seed + i,
                    "extra_body": extra_body,
                },
            )
            for i, url in enumerate(urls)
        ]
        self._in_flight = [0] * len(urls)
        self._sems: list[asyncio.Semaphore] | None = None

    async def complete(self, messages: list[Message], *, temperature: float, max_tokens: int) -> str:
        if self._sems is None:  # created inside the running loop
            self._sems = [asyncio.Semaphore(self.per_endpoint) for _ in self._workers]
        i = min(range(len(self._workers)), key=lambda j: self._in_flight[j])
        self._in_flight[i] += 1
        try:
            async with self._sems[i]:
                kind, text = await self._workers[i].complete.remote(messages, temperature, max_tokens)
        finally:
            self._in_flight[i] -= 1
        if kind == "fatal":
            raise LLMFatalError(text)
        if kind == "error":
            raise LLMError(text)
        return str(text)

    async def aclose(self) -> None:
        """Collect each endpoint's counters into ``stats`` (per endpoint in ``endpoint_stats``)."""
        total = BackendStats()
        for url, worker in zip(self.base_urls, self._workers, strict=True):
            stats = await worker.stats.remote()
            self.endpoint_stats[url] = stats
            for f in fields(BackendStats):
                setattr(total, f.name, getattr(total, f.name) + stats[f.name])
        self.stats = total

    def shutdown(self) -> None:
        """End the endpoint actors (their HTTP clients go with them)."""
        ray = require_ray()
        for worker in self._workers:
            ray.kill(worker)
        self._workers = []


__all__ = ["RayFanoutBackend"]
