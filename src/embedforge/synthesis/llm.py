"""LLM backends: any OpenAI-compatible chat-completions endpoint, or a local transformers checkpoint.

``OpenAIBackend`` talks to vLLM, SGLang, Ollama, TGI or a hosted API through the ``openai`` client:
async, at most ``concurrency`` requests in flight, a timeout per request, and retries with full-jitter
exponential backoff on timeouts, dropped connections, 5xx and 429 (a 429's ``Retry-After`` is
honoured). Errors that no retry can fix (401, 403, 404: bad key, bad model) raise ``LLMFatalError``
so a run stops at once instead of failing every record.

``LocalBackend`` (``local:PATH``) runs a chat model in-process with transformers, one request at a
time, for users who have a checkpoint but no server.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from embedforge.spec import ModelSpec

Message = dict[str, str]


class LLMError(RuntimeError):
    """A request failed for good (retries exhausted, or a non-retryable answer): the record fails."""


class LLMFatalError(LLMError):
    """No request can succeed (bad credentials, unknown model or endpoint): the run stops."""


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff: attempt n waits uniform(0, min(max_delay, base_delay * 2**n))."""

    max_retries: int = 6  # retries after the first attempt
    base_delay: float = 0.5  # seconds
    max_delay: float = 30.0  # seconds; also caps a server's Retry-After

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(f"retry settings must be >= 0, got {self}")

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        jitter = rng.uniform(0.0, min(self.max_delay, self.base_delay * 2**attempt))
        if retry_after is not None:
            return max(min(retry_after, self.max_delay), jitter)
        return jitter


@dataclass
class BackendStats:
    """Counters a run reports: requests sent and what went wrong with them."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    server_errors: int = 0


class LLMBackend(Protocol):
    model_name: str
    concurrency: int
    stats: BackendStats

    async def complete(self, messages: list[Message], *, temperature: float, max_tokens: int) -> str: ...

    async def aclose(self) -> None: ...


def _retry_after(headers: object) -> float | None:
    try:
        value = headers.get("retry-after")  # type: ignore[attr-defined]
        return float(value) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None


@dataclass
class OpenAIBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint (``base_url`` ends in ``/v1`` as a rule)."""

    base_url: str
    model_name: str
    api_key: str | None = None
    concurrency: int = 16
    timeout: float = 120.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    seed: int = 0
    extra_body: dict | None = None
    stats: BackendStats = field(default_factory=BackendStats)

    def __post_init__(self) -> None:
        import openai

        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        self._openai = openai
        # retries are ours (jittered, counted, Retry-After aware), so the client's own are off
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=self.timeout,
            max_retries=0,
        )
        self._sem: asyncio.Semaphore | None = None
        self._rng = random.Random(self.seed)

    async def complete(self, messages: list[Message], *, temperature: float, max_tokens: int) -> str:
        openai = self._openai
        last: str = ""
        for attempt in range(self.retry.max_retries + 1):
            retry_after: float | None = None
            if self._sem is None:  # created inside the running loop
                self._sem = asyncio.Semaphore(self.concurrency)
            try:
                async with self._sem:
                    self.stats.requests += 1
                    resp = await self._client.chat.completions.create(
                        model=self.model_name,
                        messages=messages,  # type: ignore[arg-type]
                        temperature=temperature,
                        max_tokens=max_tokens,
                        extra_body=self.extra_body,
                    )
                if not resp.choices or resp.choices[0].message.content is None:
                    last = "the answer has no message content"
                else:
                    return resp.choices[0].message.content
            except openai.RateLimitError as e:
                self.stats.rate_limited += 1
                retry_after = _retry_after(e.response.headers)
                last = f"429 rate limited: {e.message}"
            except openai.APITimeoutError:
                self.stats.timeouts += 1
                last = f"timed out after {self.timeout:g} s"
            except openai.APIConnectionError as e:
                self.stats.connection_errors += 1
                last = f"connection error: {e.__cause__ or e}"
            except openai.APIStatusError as e:
                if e.status_code in (401, 403, 404):
                    raise LLMFatalError(
                        f"{self.base_url} answered {e.status_code} for model {self.model_name!r}: {e.message}"
                    ) from e
                if e.status_code < 500 and e.status_code not in (408, 409):
                    raise LLMError(f"{e.status_code}: {e.message}") from e
                self.stats.server_errors += 1
                last = f"{e.status_code}: {e.message}"
            if attempt < self.retry.max_retries:
                self.stats.retries += 1
                await asyncio.sleep(self.retry.delay(attempt, self._rng, retry_after))
        raise LLMError(f"request failed after {self.retry.max_retries + 1} attempts; last error: {last}")

    async def aclose(self) -> None:
        await self._client.close()


class LocalBackend:
    """A chat model run in-process with transformers (``local:PATH``, PATH a directory or a Hub id);
    one request at a time.

    The model loads through a :class:`~embedforge.spec.ModelSpec` and the library's loading rules,
    like every other model: weights from safetensors only unless ``allow_pickle``; remote code only
    with ``trust_remote_code``; ``revision`` for Hub ids; ``threads`` set at load (process-wide).
    A spec's ``max_length`` and ``batch_tokens`` do not apply to generation. Temperature 0 decodes
    greedily; otherwise sampling is seeded per request.
    """

    concurrency = 1

    def __init__(
        self,
        path: str,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        seed: int = 0,
    ) -> None:
        from embedforge.spec import ModelSpec

        spec = ModelSpec(
            path,
            revision=revision,
            device=device,
            dtype=dtype,
            threads=threads,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
        )
        self._load(spec)
        self.stats = BackendStats()
        self._seed = seed
        self._torch_lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, seed: int = 0) -> LocalBackend:
        """The backend of ``spec`` (its model a chat checkpoint: directory or Hub id)."""
        return cls(
            spec.model,
            revision=spec.revision,
            device=spec.device,
            dtype=spec.dtype,
            threads=spec.threads,
            allow_pickle=spec.allow_pickle,
            trust_remote_code=spec.trust_remote_code,
            seed=seed,
        )

    def _load(self, spec: ModelSpec) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from embedforge.loading import check_weights, resolve_checkpoint, resolve_device, resolve_dtype

        spec.prepare()  # the revision rule and the thread count, as for every model
        # a local directory, or a Hub id fetched like every other checkpoint
        ckpt = resolve_checkpoint(spec.model, revision=spec.revision)
        fmt = check_weights(ckpt, allow_pickle=spec.allow_pickle)  # safetensors unless pickle is allowed
        self.spec = spec
        self.model_name = spec.model
        self.device = resolve_device(spec.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(ckpt), trust_remote_code=spec.trust_remote_code)
        if self.tokenizer.chat_template is None:
            raise ValueError(
                f"the tokenizer at {spec.model!r} has no chat template; a chat (instruct) model is needed"
            )
        model = AutoModelForCausalLM.from_pretrained(
            str(ckpt),
            dtype=resolve_dtype(spec.dtype, self.device),
            use_safetensors=fmt == "safetensors",
            trust_remote_code=spec.trust_remote_code,
        )
        model.to(self.device)  # type: ignore[arg-type]  # transformers types its wrapped .to() oddly
        self.model = model.eval()

    def generate(self, messages: list[Message], *, temperature: float, max_tokens: int) -> str:
        """Synchronous generation: the chat template with the generation prompt, then the new tokens."""
        import torch

        enc: Any = self.tokenizer.apply_chat_template(  # a BatchEncoding with return_dict=True
            messages, add_generation_prompt=True, enable_thinking=False, return_dict=True, return_tensors="pt"
        )
        input_ids = enc["input_ids"].to(self.device)
        attention_mask = enc["attention_mask"].to(self.device)
        kwargs: dict = {"max_new_tokens": max_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._torch_lock, torch.no_grad():
            torch.manual_seed(self._seed + self.stats.requests)
            self.stats.requests += 1
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return str(self.tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True))

    async def complete(self, messages: list[Message], *, temperature: float, max_tokens: int) -> str:
        # the thread lock serialises generation; to_thread keeps the event loop (and the writer) running
        return await asyncio.to_thread(
            self.generate, messages, temperature=temperature, max_tokens=max_tokens
        )

    async def aclose(self) -> None:
        return None


def make_backend(
    llm: str,
    model: str | None = None,
    *,
    api_key: str | None = None,
    concurrency: int = 16,
    timeout: float = 120.0,
    retry: RetryPolicy | None = None,
    seed: int = 0,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    extra_body: dict | None = None,
    local: ModelSpec | None = None,
) -> LLMBackend:
    """``local:PATH`` gives a :class:`LocalBackend`; an ``http(s)://`` URL an :class:`OpenAIBackend`.

    ``local`` holds the loading options of a ``local:PATH`` model (revision, device, dtype,
    threads ...; its ``model`` is replaced by PATH); ``allow_pickle`` and ``trust_remote_code``
    switch those on as well. An endpoint ignores them.
    """
    if llm.startswith("local:"):
        from embedforge.spec import ModelSpec

        path = llm[len("local:") :]
        spec = local.replace(model=path) if local is not None else ModelSpec(path)
        spec = spec.replace(
            allow_pickle=spec.allow_pickle or allow_pickle,
            trust_remote_code=spec.trust_remote_code or trust_remote_code,
        )
        return LocalBackend.from_spec(spec, seed=seed)
    if llm.startswith(("http://", "https://")):
        if not model:
            raise ValueError(f"--model is required with an OpenAI-compatible endpoint ({llm})")
        return OpenAIBackend(
            llm,
            model,
            api_key=api_key,
            concurrency=concurrency,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            seed=seed,
            extra_body=extra_body,
        )
    raise ValueError(
        f"--llm must be an http(s):// URL of an OpenAI-compatible endpoint or local:PATH, got {llm!r}"
    )
