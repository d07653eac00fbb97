"""``Reranker``: Qwen3-Reranker scoring, exact and with shared-prefix reuse.

score = softmax([z_no, z_yes])[1] of the next-token logits at the last position, computed from
the final hidden state at that one position against only the ``no``/``yes`` rows of the LM head.
When one query meets many documents, the longest common token prefix of their full sequences
(system prompt, instruction, query) runs through the runtime once and its cache serves every
document (when the runtime supports a reusable prefix cache).

Truncation: an input is ``prefix + pair + suffix``; only the pair (instruction, query, document)
is cut, to the room ``max_length - template`` tokens. A pair that fits is never cut. A pair that
does not fit is cut from its end, as the model card does, so a long document loses its tail.
The query gets a bounded share: of the tokens that the instruction and the two fixed headers
(``<Instruct>: ... <Query>: `` and ``\n<Document>: ``) leave, the query may fill at most half,
``share = (room - instruction part - headers) // 2``. When a pair does not fit and its query is
longer than that share, cutting from the end would cut the document away (every document would
then score the same), so the query is cut instead, with a warning, and the document keeps
``min(its length, room - instruction part - share)`` tokens, its header included: at least half of
what the instruction leaves, whatever the query's length. Queries within their share are never cut.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ._base import ModelWrapper, load_tokenizer
from .batching import pad_left, pad_right, run_batched
from .export import apply_backend, check_export, export_runtime
from .inputs import InputTooLongError, check_pairs, check_positive, check_text, check_texts
from .loading import (
    check_weights,
    fingerprint,
    resolve_checkpoint,
    resolve_device,
    resolve_dtype,
)
from .prompts import (
    DEFAULT_RERANK_INSTRUCTION,
    RERANK_PREFIX,
    RERANK_SUFFIX,
    format_rerank_document,
    format_rerank_pair,
    format_rerank_query,
)
from .runtime import Runtime, TorchRuntime, check_backend

DEFAULT_MAX_LENGTH = 8192
MIN_SHARED_PREFIX = 16  # below this many common tokens, reuse saves less than it costs


@dataclass
class RankedDocument:
    """One result of ``Reranker.rank``: position in the input list, score in [0, 1], the text."""

    index: int
    score: float
    document: str


@dataclass
class PairTokens:
    """Token ids of reranker inputs (``prefix + pair + suffix``) and which had their query cut."""

    ids: list[list[int]]
    query_truncated: list[bool]


def common_prefix_length(seqs: Sequence[list[int]]) -> int:
    """Length of the longest common token prefix, leaving at least one token in every sequence."""
    shortest = min(len(s) for s in seqs)
    first = seqs[0]
    n = 0
    while n < shortest - 1 and all(s[n] == first[n] for s in seqs):
        n += 1
    return n


def rank_order(scores: Sequence[float] | np.ndarray, top_k: int | None = None) -> list[int]:
    """Positions sorted best first; equal scores keep input order; NaN last; at most ``top_k``.

    The one ranking rule of embedforge (``Reranker.rank``, the server's rerank endpoint).
    """
    check_positive(top_k, "top_k")
    values = np.asarray(scores)
    order = np.argsort(-values, kind="stable")  # (n,)
    return [int(i) for i in order[:top_k]]


class Reranker(ModelWrapper):
    """Qwen3-Reranker: point-wise relevance scores in [0, 1].

    ``model`` is a transformers ``*ForCausalLM`` module (wrapped in a
    :class:`~embedforge.runtime.TorchRuntime`) or any :class:`~embedforge.runtime.Runtime`. One
    ``Reranker`` may be shared by many threads.

    Example::

        rr = Reranker.from_pretrained("Qwen/Qwen3-Reranker-0.6B")
        rr.rank("What is the capital of China?", ["The capital of China is Beijing.", "Gravity ..."])
    """

    def __init__(
        self,
        model: torch.nn.Module | Runtime,
        tokenizer,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_tokens: int | None = None,
        prefix_reuse: bool = True,
        name_or_path: str = "",
        fingerprint: str = "",
    ) -> None:
        check_positive(batch_tokens, "batch_tokens")
        self.runtime: Runtime = self._torch_runtime(model) if isinstance(model, torch.nn.Module) else model
        self.tokenizer = tokenizer
        self._batch_tokens = batch_tokens
        self.prefix_reuse = prefix_reuse
        self.name_or_path = name_or_path
        self.fingerprint = fingerprint
        self.prefix_ids, self.suffix_ids = self._token_ids([RERANK_PREFIX, RERANK_SUFFIX])
        if max_length <= self.template_tokens:
            raise ValueError(
                f"max_length={max_length} leaves no room for the pair: the template alone takes "
                f"{self.template_tokens} tokens"
            )
        self.max_length = max_length
        self.yes_id = self._single_token("yes")
        self.no_id = self._single_token("no")
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else 0

    def _torch_runtime(self, module: torch.nn.Module) -> Runtime:
        return TorchRuntime(module, causal=True)

    def _single_token(self, word: str) -> int:
        ids = self._token_ids([word])[0]
        if len(ids) != 1:
            raise ValueError(
                f"the tokenizer splits {word!r} into {ids}; a Qwen3 reranker tokenizer is required"
            )
        return ids[0]

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_tokens: int | None = None,
        prefix_reuse: bool = True,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
        revision: str | None = None,
        backend: str = "torch",
    ) -> Reranker:
        """Load a Qwen3-Reranker checkpoint (``*ForCausalLM``) from a directory or the Hub;
        ``backend`` names the runtime (``embedforge.runtime.BACKENDS``)."""
        from transformers import AutoModelForCausalLM

        check_backend(backend)
        path = resolve_checkpoint(name_or_path, revision=revision)
        manifest = check_export(path, backend, "reranker")  # an export loads only as its backend
        model: Any = export_runtime(path, manifest, backend, device=device, dtype=dtype)  # ONNX: no weights
        if model is None:
            fmt = check_weights(path, allow_pickle=allow_pickle)
            dev = resolve_device(device)
            model = AutoModelForCausalLM.from_pretrained(
                str(path),
                dtype=resolve_dtype(dtype, dev),
                use_safetensors=fmt == "safetensors",
                trust_remote_code=trust_remote_code,
            )
            model.to(dev).eval()
        reranker = cls(
            model,
            load_tokenizer(path, trust_remote_code=trust_remote_code),
            max_length=max_length,
            batch_tokens=batch_tokens,
            prefix_reuse=prefix_reuse,
            name_or_path=str(name_or_path),
            fingerprint=fingerprint(path, "reranker", max_length),
        )
        apply_backend(reranker, path, backend, manifest)  # int8: quantize; onnx (see embedforge.export)
        return reranker

    # ------------------------------------------------------------------ tokens
    @property
    def template_tokens(self) -> int:
        """Tokens of the fixed template around every pair (prefix and suffix)."""
        return len(self.prefix_ids) + len(self.suffix_ids)

    @property
    def pair_room(self) -> int:
        """Tokens left for the pair (instruction, query, document) in one input."""
        return self.max_length - self.template_tokens

    @staticmethod
    def _instruction(instruction: str | None) -> str:
        return DEFAULT_RERANK_INSTRUCTION if instruction is None else check_text(instruction, "instruction")

    def check_lengths(
        self, pairs: Sequence[tuple[str, str]], instruction: str | None = None, *, name: str = "pairs"
    ) -> None:
        """Raise :class:`~embedforge.inputs.InputTooLongError` (naming ``name[i]``) for the first
        pair whose full input, template included, exceeds ``max_length`` (would be truncated)."""
        items = check_pairs(pairs)
        instr = self._instruction(instruction)
        texts = [format_rerank_pair(q, d, instr) for q, d in items]
        for i, x in enumerate(self._token_ids(texts)):
            if len(x) + self.template_tokens > self.max_length:
                raise InputTooLongError(name, i, len(x) + self.template_tokens, self.max_length)

    def tokenize_pairs_with_info(
        self, pairs: Sequence[tuple[str, str]], instruction: str | None = None
    ) -> PairTokens:
        """``prefix + pair + suffix`` token ids per (query, document), truncated by the rule of
        the module docstring, and which pairs had their query cut (no warning here)."""
        items = check_pairs(pairs)
        instr = self._instruction(instruction)
        if not items:
            return PairTokens([], [])
        room = self.pair_room
        texts = [format_rerank_pair(q, d, instr) for q, d in items]
        # the model card's cut; the slice keeps the limit even if the shared tokenizer was changed
        pair_ids = [x[:room] for x in self._token_ids(texts, max_length=room)]
        truncated = [False] * len(items)
        fixed, headers = (
            len(x) for x in self._token_ids([format_rerank_query("", instr), format_rerank_document("")])
        )
        share = (room - fixed - headers) // 2  # the query's share of what instruction and headers leave
        if share < 1:  # the instruction fills the window: nothing to share
            return PairTokens([self.prefix_ids + x + self.suffix_ids for x in pair_ids], truncated)
        heads = list(dict.fromkeys(q for q, _ in items))
        head_ids = dict(
            zip(heads, self._token_ids([format_rerank_query(q, instr) for q in heads]), strict=True)
        )
        maybe = [
            i
            for i, (q, _) in enumerate(items)
            if len(pair_ids[i]) == room and len(head_ids[q]) - fixed > share
        ]
        full = self._token_ids([texts[i] for i in maybe])  # rare: only pairs with long queries
        long = [i for i, x in zip(maybe, full, strict=True) if len(x) > room]
        doc_room = room - fixed - share  # >= headers + share
        docs = self._token_ids([format_rerank_document(items[i][1]) for i in long], max_length=doc_room)
        for i, doc in zip(long, docs, strict=True):
            head = head_ids[items[i][0]]
            keep = room - len(doc)  # >= fixed + share: the query gives way, the document keeps its part
            pair_ids[i] = head[:keep] + doc
            truncated[i] = len(head) > keep
        ids = [self.prefix_ids + x + self.suffix_ids for x in pair_ids]
        return PairTokens(ids, truncated)

    def tokenize_pairs(
        self, pairs: Sequence[tuple[str, str]], instruction: str | None = None
    ) -> list[list[int]]:
        """``prefix + pair + suffix`` token ids per (query, document); only the pair is truncated
        (see the module docstring); warns when queries are cut to leave the documents room."""
        out = self.tokenize_pairs_with_info(pairs, instruction)
        n_cut = sum(out.query_truncated)
        if n_cut:
            warnings.warn(
                f"{n_cut} of {len(out.ids)} rerank pairs did not fit the {self.pair_room}-token pair window "
                "with a query longer than half of the room the instruction leaves; their query was cut "
                "so that the document keeps the other half (see embedforge.reranker)",
                UserWarning,
                stacklevel=2,
            )
        return out.ids

    def collate(self, ids: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """Left-pad a batch onto the device (the last position is then the last real token)."""
        input_ids, mask = pad_left(ids, self.pad_token_id)
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    # ------------------------------------------------------------------ model
    def last_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final (normed) hidden state at the last real position: (batch, hidden)."""
        return self.runtime.last_position_states(input_ids, attention_mask)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """[z_no, z_yes] from last-position states: (batch, hidden) -> (batch, 2) float32."""
        return self.runtime.head_logits(hidden, (self.no_id, self.yes_id))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [no, yes] at the last position, (batch, 2); differentiable with the torch
        runtime (training uses it)."""
        return self.logits_from_hidden(self.last_hidden(input_ids, attention_mask))

    @staticmethod
    def scores_from_logits(logits: torch.Tensor) -> torch.Tensor:
        """softmax([z_no, z_yes])[1]: (batch, 2) -> (batch,)."""
        return torch.softmax(logits.float(), dim=-1)[:, 1]

    # ------------------------------------------------------------------ scoring
    def _score_plain(self, ids: Sequence[list[int]], max_tokens: int, bar: tqdm) -> torch.Tensor:
        return run_batched(
            ids,
            lambda b: self.scores_from_logits(self.forward(**self.collate(b))),
            max_tokens=max_tokens,
            out=torch.empty(len(ids)),
            progress=bar,
        )

    def _score_shared_prefix(
        self, ids: Sequence[list[int]], prefix_len: int, max_tokens: int, bar: tqdm
    ) -> torch.Tensor:
        """Run the common prefix once, then every remainder against the runtime's prefix cache."""
        cache = self.runtime.build_prefix_cache(ids[0][:prefix_len])

        def run(batch: list[list[int]]) -> torch.Tensor:
            rest_ids, rest_mask = pad_right(batch, self.pad_token_id)  # (B, S)
            states = self.runtime.states_after_prefix(
                cache, rest_ids.to(self.device), rest_mask.to(self.device)
            )  # (B, hidden)
            return self.scores_from_logits(self.logits_from_hidden(states))

        rests = [x[prefix_len:] for x in ids]
        return run_batched(rests, run, max_tokens=max_tokens, out=torch.empty(len(ids)), progress=bar)

    def score_ids(
        self,
        ids: Sequence[list[int]],
        *,
        groups: Sequence[Sequence[int]] | None = None,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Scores of tokenized inputs. ``groups`` lists positions that share a query: each group
        of two or more reuses its common prefix (when ``prefix_reuse`` is on and the runtime
        supports a prefix cache)."""
        check_positive(batch_tokens, "batch_tokens")
        budget = batch_tokens or self.batch_tokens
        reuse = self.prefix_reuse and self.runtime.supports_prefix_cache
        scores = torch.empty(len(ids))
        plain: list[int] = []
        bar = tqdm(total=len(ids), desc="rerank", disable=not show_progress)
        try:
            with torch.inference_mode():
                for group in groups if groups is not None else [range(len(ids))]:
                    group = list(group)
                    if not group:
                        continue
                    member_ids = [ids[i] for i in group]
                    p = common_prefix_length(member_ids) if reuse and len(group) > 1 else 0
                    if p >= MIN_SHARED_PREFIX:
                        scores[group] = self._score_shared_prefix(member_ids, p, budget, bar)
                    else:
                        plain.extend(group)
                if plain:
                    scores[plain] = self._score_plain([ids[i] for i in plain], budget, bar)
        finally:
            bar.close()
        return scores.numpy().astype(np.float32)

    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        instruction: str | None = None,
        *,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Relevance in [0, 1] of each (query, document) pair: (n,) float32, input order."""
        items = check_pairs(pairs)
        ids = self.tokenize_pairs(items, instruction)
        by_query: dict[str, list[int]] = defaultdict(list)
        for i, (q, _) in enumerate(items):
            by_query[q].append(i)
        return self.score_ids(
            ids, groups=list(by_query.values()), batch_tokens=batch_tokens, show_progress=show_progress
        )

    def score(
        self,
        query: str,
        documents: Sequence[str],
        instruction: str | None = None,
        *,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Relevance in [0, 1] of each document to ``query``: (n_docs,) float32, input order."""
        check_text(query, "query")
        docs = check_texts(documents, "documents")
        return self.score_pairs(
            [(query, d) for d in docs], instruction, batch_tokens=batch_tokens, show_progress=show_progress
        )

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        instruction: str | None = None,
        **kwargs,
    ) -> list[RankedDocument]:
        """Documents sorted by decreasing score (ties keep input order), at most ``top_k``."""
        check_positive(top_k, "top_k")
        docs = check_texts(documents, "documents")
        scores = self.score(query, docs, instruction, **kwargs)
        return [RankedDocument(i, float(scores[i]), docs[i]) for i in rank_order(scores, top_k)]

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save weights (safetensors) and tokenizer; reload with ``Reranker.from_pretrained``."""
        module: Any = self.model
        module.save_pretrained(str(path), safe_serialization=True)
        with self.tokenizer_lock:
            self.tokenizer.save_pretrained(str(path))

    def __repr__(self) -> str:
        return f"Reranker({self.name_or_path!r}, max_length={self.max_length}, device={self.device}, dtype={self.dtype})"


__all__ = ["PairTokens", "RankedDocument", "Reranker", "common_prefix_length", "rank_order"]
