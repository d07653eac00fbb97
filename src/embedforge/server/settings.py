"""Server settings: command-line flags or ``EMBEDFORGE_*`` environment variables, validated at start-up."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from embedforge.spec import BACKENDS, ModelSpec, process_threads


def _own(kind: str, name: str) -> str:
    flag = ModelSpec.flag(name)
    return f"The {kind}'s own {flag[2:]} (default: {flag}, which applies to both models)."


class ServerSettings(BaseSettings):
    """Everything ``embedforge serve`` and :func:`embedforge.server.create_app` need.

    Each field can be set by its flag (``--max-batch-tokens``) or its environment variable
    (``EMBEDFORGE_MAX_BATCH_TOKENS``); flags win. At least one model must be given.
    """

    model_config = SettingsConfigDict(env_prefix="EMBEDFORGE_", extra="forbid", validate_default=True)

    embedder: str | None = Field(None, description="Embedding model: a local directory or a Hub id.")
    reranker: str | None = Field(
        None, description="Reranker model (Qwen3-Reranker layout): directory or Hub id."
    )
    embedder_name: str | None = Field(
        None, description="Model id clients send as `model` for the embedder (default: the --embedder value)."
    )
    reranker_name: str | None = Field(
        None, description="Model id clients send as `model` for the reranker (default: the --reranker value)."
    )
    host: str = Field("127.0.0.1", min_length=1, description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    api_key: SecretStr | None = Field(
        None,
        description="When set, inference routes need `Authorization: Bearer <key>`; health and metrics stay public. "
        "Prefer EMBEDFORGE_API_KEY: command lines are visible to other users.",
    )
    max_batch_tokens: int = Field(
        16384,
        gt=0,
        description="Token budget of a merged batch: queued requests join while their tokens fit; the "
        "model runs it in length-sorted sub-batches of at most N padded tokens.",
    )
    max_queue: int = Field(
        256, gt=0, description="Requests waiting per model before new ones get 429 with Retry-After."
    )
    max_request_inputs: int = Field(
        2048, gt=0, description="Most inputs (texts or documents) in one request; more gets 413."
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, gt=0, description="Largest request body in bytes; more gets 413."
    )
    # the model options (embedforge.spec.ModelSpec): these apply to both models unless the
    # model's own embedder_* / reranker_* field is set
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of Hub-id models.")
    max_length: int | None = Field(
        None, gt=1, description="Token limit per input passed to the models (default: the model's own, 8192)."
    )
    index: str | None = Field(
        None,
        description="Index directory (embedforge index build) searched by POST /v1/search and the "
        "playground's Search tab; it encodes queries with the model that built it.",
    )
    device: str | None = Field(None, description="torch device (default: cuda when available, else cpu).")
    dtype: str | None = Field(
        None, description="torch dtype name, e.g. bfloat16 (default: bf16 on GPU, fp32 on CPU)."
    )
    batch_tokens: int | None = Field(
        None, gt=0, description="Padded tokens per model forward pass (default: --max-batch-tokens)."
    )
    threads: int | None = Field(
        None,
        gt=0,
        le=1024,
        description="torch intra-op CPU threads of the serving process (default: torch's choice).",
    )
    backend: str = Field("torch", description=f"Runtime that runs the models: {' | '.join(BACKENDS)}.")
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Extra time a batch waits to fill up after its first request (0: none).",
    )
    dynamic_batching: bool = Field(
        True, description="Merge concurrent requests into one batch; off = one request per model call."
    )
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After sent with 429.")
    graceful_timeout_s: int = Field(
        30,
        ge=0,
        le=3600,
        description="On SIGTERM, how long in-flight requests may take before the server exits.",
    )
    log_level: str = Field(
        "info", pattern="^(critical|error|warning|info|debug|trace)$", description="uvicorn log level."
    )
    access_log: bool = Field(True, description="Log one line per request (uvicorn's access log).")
    allow_pickle: bool = Field(False, description="Allow loading non-safetensors (pickle) weights.")
    trust_remote_code: bool = Field(False, description="Allow running code shipped with a checkpoint.")
    # one model's own options (default: the shared field of the same name)
    embedder_revision: str | None = Field(None, description=_own("embedder", "revision"))
    embedder_device: str | None = Field(None, description=_own("embedder", "device"))
    embedder_dtype: str | None = Field(None, description=_own("embedder", "dtype"))
    embedder_max_length: int | None = Field(None, gt=1, description=_own("embedder", "max_length"))
    embedder_batch_tokens: int | None = Field(None, gt=0, description=_own("embedder", "batch_tokens"))
    embedder_threads: int | None = Field(None, gt=0, le=1024, description=_own("embedder", "threads"))
    embedder_backend: str | None = Field(None, description=_own("embedder", "backend"))
    embedder_allow_pickle: bool | None = Field(None, description=_own("embedder", "allow_pickle"))
    embedder_trust_remote_code: bool | None = Field(None, description=_own("embedder", "trust_remote_code"))
    reranker_revision: str | None = Field(None, description=_own("reranker", "revision"))
    reranker_device: str | None = Field(None, description=_own("reranker", "device"))
    reranker_dtype: str | None = Field(None, description=_own("reranker", "dtype"))
    reranker_max_length: int | None = Field(None, gt=1, description=_own("reranker", "max_length"))
    reranker_batch_tokens: int | None = Field(None, gt=0, description=_own("reranker", "batch_tokens"))
    reranker_threads: int | None = Field(None, gt=0, le=1024, description=_own("reranker", "threads"))
    reranker_backend: str | None = Field(None, description=_own("reranker", "backend"))
    reranker_allow_pickle: bool | None = Field(None, description=_own("reranker", "allow_pickle"))
    reranker_trust_remote_code: bool | None = Field(None, description=_own("reranker", "trust_remote_code"))

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        if self.embedder is None and self.reranker is None:
            raise ValueError("give at least one model: --embedder PATH and/or --reranker PATH")
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            raise ValueError(
                "api_key is empty: give a non-empty key, or none to serve without authentication"
            )
        if self.embedder is not None and self.reranker is not None and self.embedder_id == self.reranker_id:
            raise ValueError(
                f"the embedder and the reranker are both served as {self.embedder_id!r}; "
                "give them different ids with --embedder-name / --reranker-name"
            )
        process_threads(self.embedder_spec(), self.reranker_spec())  # also validates both specs
        return self

    def _spec(self, kind: str, model: str | None) -> ModelSpec | None:
        if model is None:
            return None
        values: dict[str, Any] = {}
        for name in ModelSpec.option_names():
            own = getattr(self, f"{kind}_{name}")
            value = own if own is not None else getattr(self, name)
            if value is not None:
                values[name] = value
        if values.get("batch_tokens") is None:  # a forward pass never exceeds a merged batch
            values["batch_tokens"] = self.max_batch_tokens
        return ModelSpec(model, **values)

    def embedder_spec(self) -> ModelSpec | None:
        """How to load the embedder (``None`` when none is served)."""
        return self._spec("embedder", self.embedder)

    def reranker_spec(self) -> ModelSpec | None:
        """How to load the reranker (``None`` when none is served)."""
        return self._spec("reranker", self.reranker)

    def process_threads(self) -> int | None:
        """The process's torch thread count (the models' common one)."""
        return process_threads(self.embedder_spec(), self.reranker_spec())

    @property
    def embedder_id(self) -> str | None:
        return self.embedder_name or (self.embedder.rstrip("/") if self.embedder else None)

    @property
    def reranker_id(self) -> str | None:
        return self.reranker_name or (self.reranker.rstrip("/") if self.reranker else None)


__all__ = ["ServerSettings"]
