"""``Embedder``: Qwen3-Embedding (and any sentence-transformers model) done exactly and fast.

Texts are formatted as the model card says (``prompts``), tokenized once with the end token
appended exactly once, batched by length under a token budget (``batching``), run by the runtime
(``runtime``: the backbone, pooled with ``pooling``), L2-normalised, optionally truncated to a
Matryoshka dimension, and returned in input order. One ``Embedder`` may be shared by many
threads: tokenizer calls are serialised, the rest holds no per-call state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ._base import ModelWrapper, load_tokenizer
from .batching import DEFAULT_CHUNK_SIZE, ProgressBar, chunks, pad_left, pad_right, run_batched
from .export import apply_backend, check_export, export_runtime
from .inputs import InputTooLongError, check_dim, check_positive, check_text, check_texts
from .loading import (
    CheckpointError,
    check_weights,
    fingerprint,
    is_decoder_config,
    read_sentence_transformers,
    resolve_checkpoint,
    resolve_device,
    resolve_dtype,
    write_sentence_transformers,
)
from .pooling import Pooling, truncate_and_normalize
from .prompts import DEFAULT_QUERY_INSTRUCTION, ENDOFTEXT, query_prompt, side_prompt
from .runtime import Runtime, TorchRuntime, check_backend

DEFAULT_MAX_LENGTH = 8192


class Embedder(ModelWrapper):
    """Text embedding model.

    Without sentence-transformers files a decoder-only checkpoint gets the Qwen3 treatment
    (last-token pooling, ``<|endoftext|>`` appended, the Qwen3 query prompt, L2 normalisation)
    and an encoder gets mean pooling with normalisation.

    ``model`` is a transformers module (wrapped in a :class:`~embedforge.runtime.TorchRuntime`) or
    any :class:`~embedforge.runtime.Runtime`.

    Example::

        emb = Embedder.from_pretrained("Qwen/Qwen3-Embedding-0.6B")
        q = emb.encode_queries(["What is the capital of China?"])
        d = emb.encode_documents(["The capital of China is Beijing."])
        scores = q @ d.T
    """

    def __init__(
        self,
        model: torch.nn.Module | Runtime,
        tokenizer,
        *,
        pooling: Pooling | str,
        normalize: bool = True,
        prompt_table: dict[str, str] | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        is_decoder: bool = True,
        padding_side: Literal["left", "right"] | None = None,
        batch_tokens: int | None = None,
        name_or_path: str = "",
        fingerprint: str = "",
    ) -> None:
        check_positive(max_length, "max_length")
        check_positive(batch_tokens, "batch_tokens")
        self.is_decoder = is_decoder
        self.runtime: Runtime = self._torch_runtime(model) if isinstance(model, torch.nn.Module) else model
        self.tokenizer = tokenizer
        self.pooling = Pooling(pooling).value
        self.normalize = normalize
        self.prompts = dict(prompt_table or {})
        self.max_length = max_length
        self._batch_tokens = batch_tokens
        self.name_or_path = name_or_path
        self.fingerprint = fingerprint
        # Qwen3 rule: no special tokens from the tokenizer, then <|endoftext|> appended exactly once.
        with self.tokenizer_lock:
            vocab_eos = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
            self._n_special = tokenizer.num_special_tokens_to_add(pair=False)
        self.end_token_id: int | None = (
            vocab_eos
            if self.pooling == Pooling.LASTTOKEN.value
            and vocab_eos is not None
            and vocab_eos != tokenizer.unk_token_id
            else None
        )
        if padding_side is None:  # encoders need right padding (absolute positions, [CLS] first)
            padding_side = "left" if is_decoder else "right"
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.padding_side = padding_side
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.end_token_id or 0)

    def _torch_runtime(self, module: torch.nn.Module) -> Runtime:
        return TorchRuntime(module, causal=self.is_decoder)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        batch_tokens: int | None = None,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        revision: str | None = None,
        backend: str = "torch",
    ) -> Embedder:
        """Load a local directory or a Hub id.

        ``max_length`` defaults to the checkpoint's sentence-transformers ``max_seq_length``,
        else 8192, and never exceeds an encoder's position table. ``dtype`` defaults to fp32 on
        CPU and bf16 on CUDA. Pickle weights load only with ``allow_pickle=True``. ``backend``
        names the runtime (``embedforge.runtime.BACKENDS``).
        """
        from transformers import AutoConfig, AutoModel

        check_backend(backend)
        path = resolve_checkpoint(name_or_path, revision=revision)
        manifest = check_export(path, backend, "embedder")  # an export loads only as its backend
        graph = export_runtime(path, manifest, backend, device=device, dtype=dtype)  # ONNX: no torch weights
        fmt = check_weights(path, allow_pickle=allow_pickle) if graph is None else ""
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        decoder = is_decoder_config(config)
        layout = read_sentence_transformers(path)
        mode = pooling or layout.pooling or ("lasttoken" if decoder else "mean")
        try:
            mode = Pooling(mode).value
        except ValueError:
            raise ValueError(f"pooling {mode!r} is not one of {[p.value for p in Pooling]}") from None
        norm = normalize if normalize is not None else (layout.normalize if layout.present else True)
        prompt_table = dict(layout.prompts)
        if not layout.present and decoder:
            prompt_table = {"query": query_prompt(DEFAULT_QUERY_INSTRUCTION), "document": ""}
        length = max_length or layout.max_seq_length or DEFAULT_MAX_LENGTH
        if not decoder and getattr(config, "max_position_embeddings", None):
            length = min(length, config.max_position_embeddings)
        model: Any = graph
        if model is None:
            model = AutoModel.from_pretrained(
                str(path),
                dtype=torch_dtype,
                use_safetensors=fmt == "safetensors",
                trust_remote_code=trust_remote_code,
            )
            model.to(dev).eval()
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        embedder = cls(
            model,
            tokenizer,
            pooling=mode,
            normalize=norm,
            prompt_table=prompt_table,
            max_length=length,
            is_decoder=decoder,
            padding_side=padding_side,
            batch_tokens=batch_tokens,
            name_or_path=str(name_or_path),
            fingerprint=fingerprint(path, mode, norm, length, sorted(prompt_table.items())),
        )
        apply_backend(embedder, path, backend, manifest)  # int8: quantize; onnx (see embedforge.export)
        return embedder

    # ------------------------------------------------------------------ formatting and tokens
    def side_prompt(self, side: str | None, instruction: str | None = None) -> str:
        """Text put before each input of ``side`` (``"query"``, ``"document"`` or ``None``): the
        rule of :func:`embedforge.prompts.side_prompt` over this checkpoint's prompts."""
        if instruction is not None:
            check_text(instruction, "instruction")
        return side_prompt(side, instruction, self.prompts)

    def query_prompt(self, instruction: str | None = None) -> str:
        """Text put before each query: the Qwen3 ``Instruct: ...\\nQuery:`` when an instruction is
        given, else the checkpoint's ``query`` prompt (the default Qwen3 one for bare decoders)."""
        return self.side_prompt("query", instruction)

    @property
    def added_tokens(self) -> int:
        """Tokens the embedder adds around a text: 1 (``<|endoftext|>``) for last-token models,
        the tokenizer's special tokens ([CLS]/[SEP]) for encoders."""
        return 1 if self.end_token_id is not None else self._n_special

    def check_lengths(self, raw: Sequence[Sequence[int]], name: str = "input") -> None:
        """Raise :class:`~embedforge.inputs.InputTooLongError` for the first token list (``raw_ids``
        output, no special tokens) that would need truncation; a trailing end token counts once."""
        eos = self.end_token_id
        for i, x in enumerate(raw):
            n = len(x) - (1 if eos is not None and x and x[-1] == eos else 0) + self.added_tokens
            if n > self.max_length:
                raise InputTooLongError(name, i, n, self.max_length)

    def finalize_ids(self, ids: Sequence[list[int]]) -> list[list[int]]:
        """Truncate token lists of text and add the model's special tokens.

        Last-token (Qwen3) models: keep ``max_length - 1`` tokens and append ``<|endoftext|>``
        once (not again when the list already ends with it). Encoders: truncate to fit and add
        the tokenizer's special tokens ([CLS] ... [SEP]).
        """
        if self.end_token_id is not None:
            eos = self.end_token_id
            out = []
            for x in ids:
                x = list(x)
                if x and x[-1] == eos:
                    x = x[:-1]
                out.append(x[: self.max_length - 1] + [eos])
            return out
        room = self.max_length - self._n_special
        with self.tokenizer_lock:
            return [self.tokenizer.build_inputs_with_special_tokens(list(x)[:room]) for x in ids]

    def tokenize(self, texts: Sequence[str], *, prompt: str = "") -> list[list[int]]:
        """``prompt + text`` for each text, tokenized exactly as the reference recipe does."""
        items = check_texts(texts)
        check_text(prompt, "prompt")
        if not items:
            return []
        full = [prompt + t for t in items] if prompt else items
        if self.end_token_id is not None:
            room = self.max_length - 1
            eos = self.end_token_id
            # the slice is a no-op; it keeps the limit even if code outside embedforge changed the
            # shared tokenizer's truncation settings during the call
            return [x[:room] + [eos] for x in self._token_ids(full, max_length=room)]
        return self._token_ids(full, add_special_tokens=True, max_length=self.max_length)

    def collate(self, ids: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """Pad a batch of token lists (left for decoders, right for encoders) onto the device."""
        pad = pad_left if self.padding_side == "left" else pad_right
        input_ids, mask = pad(ids, self.pad_token_id)
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    # ------------------------------------------------------------------ model
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, dim: int | None = None
    ) -> torch.Tensor:
        """Pooled, normalised embeddings (batch, dim or hidden); differentiable with the torch
        runtime (training uses it)."""
        emb = self.runtime.embed(input_ids, attention_mask, self.pooling)  # (batch, hidden)
        return truncate_and_normalize(emb.float(), dim, self.normalize)

    # ------------------------------------------------------------------ encoding
    def encode_ids(
        self,
        ids: Sequence[list[int]],
        *,
        dim: int | None = None,
        batch_tokens: int | None = None,
        show_progress: bool = False,
        convert_to: Literal["numpy", "torch"] = "numpy",
    ) -> np.ndarray | torch.Tensor:
        """Embed already tokenized inputs (``tokenize``/``finalize_ids`` output), in input order."""
        check_dim(dim, self.hidden_size)
        check_positive(batch_tokens, "batch_tokens")
        out = torch.empty((len(ids), dim or self.hidden_size), dtype=torch.float32)
        if ids:
            with torch.inference_mode():
                run_batched(
                    ids,
                    lambda b: self.forward(**self.collate(b), dim=dim),
                    max_tokens=batch_tokens or self.batch_tokens,
                    out=out,
                    show_progress=show_progress,
                    desc="embed",
                )
        return out.numpy() if convert_to == "numpy" else out

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        prompt: str = "",
        dim: int | None = None,
        batch_tokens: int | None = None,
        show_progress: bool = False,
        convert_to: Literal["numpy", "torch"] = "numpy",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: ProgressBar | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Embed ``prompt + text`` for each text: (n, dim or hidden) float32 in input order.

        A single str gives a 1-D vector. Inputs are tokenized ``chunk_size`` at a time, so
        memory beyond the output stays bounded for any number of texts. Progress advances per
        batch: on the caller's ``progress`` bar when given (left open), else on a bar of its own
        shown with ``show_progress``.
        """
        if convert_to not in ("numpy", "torch"):
            raise ValueError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        single = isinstance(texts, str)
        items: list[str] = [texts] if isinstance(texts, str) else check_texts(texts)
        check_dim(dim, self.hidden_size)
        check_positive(batch_tokens, "batch_tokens")
        out = torch.empty((len(items), dim or self.hidden_size), dtype=torch.float32)
        own_bar = progress is None
        bar: Any = tqdm(total=len(items), desc="embed", disable=not show_progress) if own_bar else progress
        try:
            with torch.inference_mode():
                for part in chunks(len(items), chunk_size):
                    ids = self.tokenize(items[part.start : part.stop], prompt=prompt)
                    run_batched(
                        ids,
                        lambda b: self.forward(**self.collate(b), dim=dim),
                        max_tokens=batch_tokens or self.batch_tokens,
                        out=out[part.start : part.stop],
                        progress=bar,
                    )
        finally:
            if own_bar:
                bar.close()
        if single:
            out = out[0]
        return out.numpy() if convert_to == "numpy" else out

    def encode_queries(
        self, texts: str | Sequence[str], instruction: str | None = None, dim: int | None = None, **kwargs
    ) -> np.ndarray | torch.Tensor:
        """Embed queries with the query prompt (``Instruct: {instruction}\\nQuery:`` for Qwen3)."""
        return self.encode(texts, prompt=self.side_prompt("query", instruction), dim=dim, **kwargs)

    def encode_documents(
        self, texts: str | Sequence[str], dim: int | None = None, *, instruction: str | None = None, **kwargs
    ) -> np.ndarray | torch.Tensor:
        """Embed documents: raw text (or the checkpoint's ``document`` prompt); with an
        ``instruction`` (symmetric tasks) the instructed prompt, as for queries."""
        return self.encode(texts, prompt=self.side_prompt("document", instruction), dim=dim, **kwargs)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save weights (safetensors), tokenizer and sentence-transformers files; reload with
        ``Embedder.from_pretrained(path)`` or ``SentenceTransformer(path)``."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        module: Any = self.model
        module.save_pretrained(str(out), safe_serialization=True)
        with self.tokenizer_lock:
            self.tokenizer.save_pretrained(str(out))
        write_sentence_transformers(
            out,
            pooling=self.pooling,
            normalize=self.normalize,
            prompts=self.prompts,
            max_seq_length=self.max_length,
            hidden=self.hidden_size,
        )

    def __repr__(self) -> str:
        return (
            f"Embedder({self.name_or_path!r}, pooling={self.pooling}, normalize={self.normalize}, "
            f"max_length={self.max_length}, device={self.device}, dtype={self.dtype})"
        )


__all__ = ["CheckpointError", "Embedder"]
