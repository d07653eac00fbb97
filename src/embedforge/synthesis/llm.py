"""LLM backends: any OpenAI-compatible chat-completions endpoint, or a local transformers checkpoint.

``OpenAIBackend`` talks to vLLM, SGLang, Ollama, TGI or a hosted API through the ``openai`` client:
async, at most ``concurrency`` requests in flight, a timeout per request, and retries with full-jitter
exponential backoff on timeouts, dropped connections, 5xx and 429 (a 429's ``Retry-After`` is
honoured). Errors that no retry can fix (401, 403, 404: bad key, bad model) raise ``LLMFatalError``
so a run stops at once instead of failing every record.

With ``response_format`` set, ``OpenAIBackend`` sends the JSON schema of each answer it is asked for,
so a server with constrained decoding (vLLM, SGLang, llama.cpp, OpenAI) can only produce valid JSON:

- ``json_schema``: ``{"type": "json_schema", "json_schema": {"name": ..., "schema": ...}}``, the OpenAI
  form, taken by OpenAI, vLLM, SGLang and llama.cpp's ``llama-server``;
- ``json_object``: ``{"type": "json_object", "schema": ...}``, the form of llama-cpp-python's server
  (its only one: 0.3.36 answers ``json_schema`` with a 500 naming the field), also taken by
  ``llama-server``;
- ``none`` (the default): the prompt alone asks for JSON. An endpoint of unknown make may reject a
  ``response_format`` it does not know, and a reply that is not the JSON asked for is asked again anyway.

A 400, 422 or 500 whose message names ``response_format`` stops the run (``LLMFatalError``) with a
hint to try the other dialect: every request carries the field, so none could succeed.

``LocalBackend`` (``local:PATH``) runs a chat model in-process with transformers, one request at a
time, for users who have a checkpoint but no server. PATH may also be a ``.gguf`` file (transformers
dequantises it with the ``gguf`` package). It ignores ``response_format``: no constrained decoding.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

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
    """Counters a run reports: requests sent, what went wrong with them, and tokens (as the endpoint
    reports them in ``usage``; 0 where it reports none)."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    server_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0  # answers cut off by max_tokens (finish_reason "length")


class ResponseFormat(str, Enum):
    """How the JSON schema of an answer is sent (see the module docstring)."""

    none = "none"
    json_schema = "json_schema"
    json_object = "json_object"

    @classmethod
    def parse(cls, value: ResponseFormat | str) -> ResponseFormat:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"response_format must be one of {[f.value for f in cls]}, got {value!r}"
            ) from None


@dataclass(frozen=True)
class OutputSchema:
    """The JSON schema an answer must follow; ``name`` (``[A-Za-z0-9_-]``, as OpenAI asks) names the step."""

    name: str
    schema: dict[str, Any]


def response_format_field(fmt: ResponseFormat | str, output: OutputSchema) -> dict[str, Any] | None:
    """The request's ``response_format`` for ``output`` in the dialect ``fmt`` (None: send none)."""
    fmt = ResponseFormat.parse(fmt)
    if fmt is ResponseFormat.json_schema:
        return {"type": "json_schema", "json_schema": {"name": output.name, "schema": output.schema}}
    if fmt is ResponseFormat.json_object:
        return {"type": "json_object", "schema": output.schema}
    return None


class LLMBackend(Protocol):
    model_name: str
    concurrency: int
    stats: BackendStats

    async def complete(self, messages: list[Message], *, temperature: float, max_tokens: int) -> str: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ConstrainedBackend(Protocol):
    """A backend that can send an answer's JSON schema with the request (``OpenAIBackend``)."""

    model_name: str
    concurrency: int
    stats: BackendStats
    response_format: ResponseFormat

    async def complete(
        self,
        messages: list[Message],
        *,
        temperature: float,
        max_tokens: int,
        output_schema: OutputSchema | None = None,
    ) -> str: ...

    async def aclose(self) -> None: ...


def accepts_schema(backend: object) -> bool:
    """Whether ``backend`` sends answer schemas (a constrained backend with a response format set)."""
    return isinstance(backend, ConstrainedBackend) and backend.response_format is not ResponseFormat.none


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
    # send each answer's JSON schema for constrained decoding (see the module docstring); none: don't
    response_format: ResponseFormat = ResponseFormat.none

    def __post_init__(self) -> None:
        import openai

        self.response_format = ResponseFormat.parse(self.response_format)
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

    def _body(self, output_schema: OutputSchema | None) -> dict | None:
        """``extra_body`` with the ``response_format`` of ``output_schema`` (when one is set)."""
        rf = response_format_field(self.response_format, output_schema) if output_schema else None
        if rf is None:
            return self.extra_body
        return {**(self.extra_body or {}), "response_format": rf}

    async def complete(
        self,
        messages: list[Message],
        *,
        temperature: float,
        max_tokens: int,
        output_schema: OutputSchema | None = None,
    ) -> str:
        """The answer's text. With ``output_schema`` and a ``response_format`` the schema goes along."""
        openai = self._openai
        body = self._body(output_schema)
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
                        extra_body=body,
                    )
                self._count_usage(resp)
                if not resp.choices or resp.choices[0].message.content is None:
                    last = "the answer has no message content"
                else:
                    if resp.choices[0].finish_reason == "length":
                        self.stats.truncated += 1
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
                if (
                    e.status_code in (400, 422, 500)
                    and body is not self.extra_body
                    and "response_format" in f"{e.message} {e.body}"
                ):
                    # every request carries it: no record can succeed, so stop the run (llama-cpp-python
                    # answers an unknown type with a 500 that names the field, not with a 4xx)
                    raise LLMFatalError(
                        f"{self.base_url} rejected response_format={self.response_format.value!r} "
                        f"({e.status_code}: {e.message}); try another --response-format "
                        f"({', '.join(f.value for f in ResponseFormat if f is not self.response_format)})"
                    ) from e
                if e.status_code < 500 and e.status_code not in (408, 409):
                    raise LLMError(f"{e.status_code}: {e.message}") from e
                self.stats.server_errors += 1
                last = f"{e.status_code}: {e.message}"
            if attempt < self.retry.max_retries:
                self.stats.retries += 1
                await asyncio.sleep(self.retry.delay(attempt, self._rng, retry_after))
        raise LLMError(f"request failed after {self.retry.max_retries + 1} attempts; last error: {last}")

    def _count_usage(self, resp: Any) -> None:
        usage = getattr(resp, "usage", None)
        if usage is not None:
            self.stats.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
            self.stats.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)

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

    PATH may be a ``.gguf`` file instead (e.g. a llama.cpp quantisation): transformers reads its
    tokenizer, chat template and weights with the ``gguf`` package and dequantises the weights to
    ``dtype`` (fp32 on CPU). GGUF holds no pickle, so ``allow_pickle`` does not matter; ``revision``
    does not apply to a local file.
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
        gguf = gguf_file(spec.model)
        load: dict[str, Any]
        if gguf is not None:  # a single-file llama.cpp checkpoint: no config.json, no safetensors
            ckpt, load = gguf.parent, {"gguf_file": gguf.name}
        else:
            # a local directory, or a Hub id fetched like every other checkpoint
            ckpt = resolve_checkpoint(spec.model, revision=spec.revision)
            fmt = check_weights(ckpt, allow_pickle=spec.allow_pickle)  # safetensors unless pickle is allowed
            load = {"use_safetensors": fmt == "safetensors"}
        self.spec = spec
        self.model_name = spec.model
        self.device = resolve_device(spec.device)
        tok_load = {"gguf_file": load["gguf_file"]} if gguf is not None else {}
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(ckpt), trust_remote_code=spec.trust_remote_code, **tok_load
        )
        if self.tokenizer.chat_template is None:
            raise ValueError(
                f"the tokenizer at {spec.model!r} has no chat template; a chat (instruct) model is needed"
            )
        model = AutoModelForCausalLM.from_pretrained(
            str(ckpt),
            dtype=resolve_dtype(spec.dtype, self.device),
            trust_remote_code=spec.trust_remote_code,
            **load,
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
        pad = self.tokenizer.pad_token_id
        kwargs: dict = {
            "max_new_tokens": max_tokens,
            "pad_token_id": self.tokenizer.eos_token_id if pad is None else pad,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._torch_lock, torch.no_grad():
            torch.manual_seed(self._seed + self.stats.requests)
            self.stats.requests += 1
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            new = out[0, input_ids.shape[1] :]  # (n_new,)
            self.stats.prompt_tokens += int(input_ids.shape[1])
            self.stats.completion_tokens += int(new.shape[0])
            eos = self.model.generation_config.eos_token_id
            eos_ids = set(eos if isinstance(eos, list) else [eos])
            if new.shape[0] >= max_tokens and int(new[-1]) not in eos_ids:
                self.stats.truncated += 1
        return str(self.tokenizer.decode(new, skip_special_tokens=True))

    async def complete(self, messages: list[Message], *, temperature: float, max_tokens: int) -> str:
        # the thread lock serialises generation; to_thread keeps the event loop (and the writer) running
        return await asyncio.to_thread(
            self.generate, messages, temperature=temperature, max_tokens=max_tokens
        )

    async def aclose(self) -> None:
        return None


def gguf_file(path: str) -> Path | None:
    """``path`` as a GGUF file when it names one (``*.gguf``), else None; a missing file is an error."""
    p = Path(path).expanduser()
    if p.suffix.lower() != ".gguf":
        return None
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file {path!r} does not exist")
    return p


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
    response_format: ResponseFormat | str = ResponseFormat.none,
) -> LLMBackend:
    """``local:PATH`` gives a :class:`LocalBackend`; an ``http(s)://`` URL an :class:`OpenAIBackend`.

    ``local`` holds the loading options of a ``local:PATH`` model (revision, device, dtype,
    threads ...; its ``model`` is replaced by PATH); ``allow_pickle`` and ``trust_remote_code``
    switch those on as well. An endpoint ignores them. ``response_format`` applies to an endpoint
    only; a local model cannot be constrained, so anything but ``none`` is refused there.
    """
    if llm.startswith("local:"):
        from embedforge.spec import ModelSpec

        if ResponseFormat.parse(response_format) is not ResponseFormat.none:
            raise ValueError(
                f"response_format={ResponseFormat.parse(response_format).value!r} needs an endpoint that decodes "
                "under a JSON schema; a local:PATH model has no constrained decoding (use none)"
            )
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
            response_format=ResponseFormat.parse(response_format),
        )
    raise ValueError(
        f"--llm must be an http(s):// URL of an OpenAI-compatible endpoint or local:PATH, got {llm!r}"
    )
