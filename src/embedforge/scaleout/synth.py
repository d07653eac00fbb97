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
import os
from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any

from embedforge.synthesis.llm import (
    BackendStats,
    LLMError,
    LLMFatalError,
    Message,
    OpenAIBackend,
    OutputSchema,
    ResponseFormat,
    RetryPolicy,
)

from .cluster import require_ray


class _EndpointWorker:
    """One endpoint's client, in a Ray actor: ``complete`` answers ``("ok", text)`` or
    ``("error" | "fatal", message)`` (the driver raises the library's error types from these)."""

    def __init__(self, base_url: str, model: str, options: dict[str, Any]) -> None:
        import ray

        retry = RetryPolicy(**options.pop("retry"))
        self.backend = OpenAIBackend(base_url, model, retry=retry, **options)
        self.pid = os.getpid()
        self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)

    async def complete(
        self,
        messages: list[Message],
        temperature: float,
        max_tokens: int,
        output_schema: OutputSchema | None = None,
    ) -> tuple[str, str]:
        try:
            text = await self.backend.complete(
                messages, temperature=temperature, max_tokens=max_tokens, output_schema=output_schema
            )
            return "ok", text
        except LLMFatalError as e:
            return "fatal", str(e)
        except LLMError as e:
            return "error", str(e)

    def stats(self) -> dict[str, Any]:
        """This process's counters (a restarted actor starts from zero), its pid, and whether it
        replaced a crashed one."""
        return {**asdict(self.backend.stats), "pid": self.pid, "restarted": self.restarted}


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
        response_format: ResponseFormat | str = ResponseFormat.none,
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
        self.response_format = ResponseFormat.parse(response_format)
        ray = require_ray()
        self.base_urls = urls
        self.model_name = model_name
        self.per_endpoint = concurrency
        self.concurrency = concurrency * len(urls)  # the pipeline's number of workers
        self.stats = BackendStats()
        self.endpoint_stats: dict[str, dict[str, Any]] = {}
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
                    "response_format": self.response_format,
                },
            )
            for i, url in enumerate(urls)
        ]
        self._in_flight = [0] * len(urls)
        self._sems: list[asyncio.Semaphore] | None = None

    async def complete(
        self,
        messages: list[Message],
        *,
        temperature: float,
        max_tokens: int,
        output_schema: OutputSchema | None = None,
    ) -> str:
        """The answer from the endpoint with the fewest requests in flight; with ``output_schema`` and
        a ``response_format`` the schema goes along (constrained decoding), as with one endpoint."""
        if self._sems is None:  # created inside the running loop
            self._sems = [asyncio.Semaphore(self.per_endpoint) for _ in self._workers]
        i = min(range(len(self._workers)), key=lambda j: self._in_flight[j])
        self._in_flight[i] += 1
        try:
            async with self._sems[i]:
                kind, text = await self._workers[i].complete.remote(
                    messages, temperature, max_tokens, output_schema
                )
        finally:
            self._in_flight[i] -= 1
        if kind == "fatal":
            raise LLMFatalError(text)
        if kind == "error":
            raise LLMError(text)
        return str(text)

    async def aclose(self) -> None:
        """Collect each endpoint's counters into ``stats`` (per endpoint in ``endpoint_stats``, with
        its actor's pid and whether that actor was restarted after a crash)."""
        total = BackendStats()
        for url, worker in zip(self.base_urls, self._workers, strict=True):
            stats = await worker.stats.remote()
            self.endpoint_stats[url] = stats
            for f in fields(BackendStats):
                setattr(total, f.name, getattr(total, f.name) + stats[f.name])
        self.stats = total

    def worker_pids(self) -> dict[str, int]:
        """The process of each endpoint's actor now (the tests kill one)."""
        ray = require_ray()
        got = ray.get([w.stats.remote() for w in self._workers])
        return {url: int(stats["pid"]) for url, stats in zip(self.base_urls, got, strict=True)}

    def summary(self) -> dict[str, Any]:
        """The fan-out's JSON summary after ``aclose``: requests and failures per endpoint, and how
        many endpoint actors replaced a crashed one (their requests were retried)."""
        return {
            "engine": "ray",
            "endpoints": self.endpoint_stats,
            "actor_restarts": sum(1 for s in self.endpoint_stats.values() if s.get("restarted")),
        }

    def shutdown(self) -> None:
        """End the endpoint actors (their HTTP clients go with them)."""
        ray = require_ray()
        for worker in self._workers:
            ray.kill(worker)
        self._workers = []


__all__ = ["RayFanoutBackend"]
