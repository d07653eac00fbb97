"""The synthesis stage's LLM backend, built from the recipe's ``llm`` section.

One URL (or ``local:PATH``) gives the synthesis layer's own backend (:func:`make_backend`). Several
URLs give :class:`MultiEndpointBackend`: one :class:`~embedforge.synthesis.llm.OpenAIBackend` per
endpoint, each request sent to the endpoint with the fewest requests in flight, in this process (the
Ray fan-out of :mod:`embedforge.scaleout.synth` does the same across machines).
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

from embedforge.recipe.stage_settings import LLMSettings
from embedforge.spec import ModelSpec
from embedforge.synthesis.llm import (
    BackendStats,
    LLMBackend,
    Message,
    OpenAIBackend,
    RetryPolicy,
    make_backend,
)


class MultiEndpointBackend:
    """An LLM backend over several OpenAI-compatible endpoints serving the same model."""

    def __init__(self, backends: list[OpenAIBackend]) -> None:
        if not backends:
            raise ValueError("give at least one endpoint")
        self.backends = backends
        self.model_name = backends[0].model_name
        self.response_format = backends[0].response_format  # a ConstrainedBackend when one is set
        self.concurrency = sum(b.concurrency for b in backends)  # the pipeline's number of workers
        self.stats = BackendStats()
        self._in_flight = [0] * len(backends)

    async def complete(
        self, messages: list[Message], *, temperature: float, max_tokens: int, **kw: Any
    ) -> str:
        i = min(range(len(self.backends)), key=lambda j: self._in_flight[j])
        self._in_flight[i] += 1
        try:
            return await self.backends[i].complete(
                messages, temperature=temperature, max_tokens=max_tokens, **kw
            )
        finally:
            self._in_flight[i] -= 1
            self._collect()

    def _collect(self) -> None:
        total = BackendStats()
        for b in self.backends:
            for f in fields(BackendStats):
                setattr(total, f.name, getattr(total, f.name) + getattr(b.stats, f.name))
        self.stats = total

    async def aclose(self) -> None:
        for b in self.backends:
            await b.aclose()
        self._collect()


def build_backend(llm: LLMSettings, *, seed: int) -> LLMBackend:
    """The backend of the recipe's ``llm`` section."""
    retry = RetryPolicy(llm.max_retries, llm.backoff, llm.max_backoff)
    api_key = os.environ.get(llm.api_key_env)
    urls = llm.urls
    if len(urls) == 1:
        local = None
        if urls[0].startswith("local:"):
            local = ModelSpec.from_dict({"model": urls[0][len("local:") :], **(llm.local or {})})
        return make_backend(
            urls[0],
            llm.model,
            api_key=api_key,
            concurrency=llm.concurrency,
            timeout=llm.timeout,
            retry=retry,
            seed=seed,
            extra_body=llm.extra_body,
            local=local,
            response_format=llm.response_format,
        )
    assert llm.model is not None  # LLMSettings requires it with URLs
    return MultiEndpointBackend(
        [
            OpenAIBackend(
                url,
                llm.model,
                api_key=api_key,
                concurrency=llm.concurrency,
                timeout=llm.timeout,
                retry=retry,
                seed=seed + i,
                extra_body=llm.extra_body,
                response_format=llm.response_format,
            )
            for i, url in enumerate(urls)
        ]
    )


__all__ = ["MultiEndpointBackend", "build_backend"]
