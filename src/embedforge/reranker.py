"""``Reranker``: Qwen3-Reranker scoring, exact and with shared-prefix reuse.

score = softmax([z_no, z_yes])[1] of the next-token logits at the last position, computed from
the final hidden state at that one position against only the ``no``/``yes`` rows of the LM head.
When one query meets many documents, the longest common token prefix of their full sequences
(system prompt, instruction, query) runs through the model once and its key/value cache serves
every document.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ._base import ModelWrapper, load_tokenizer
from .batching import pad_left, pad_right, position_ids_from_mask, run_batched
from .inputs import check_pairs, check_positive, check_texts
from .loading import (
    check_weights,
    fingerprint,
    resolve_checkpoint,
    resolve_device,
    resolve_dtype,
)
from .pooling import last_token_pool
from .prompts import DEFAULT_RERANK_INSTRUCTION, RERANK_PREFIX, RERANK_SUFFIX, format_rerank_pair

DEFAULT_MAX_LENGTH = 8192
MIN_SHARED_PREFIX = 16  # below this many common tokens, reuse saves less than it costs


@dataclass
class RankedDocument:
    """One result of ``Reranker.rank``: position in the input list, score in [0, 1], the text."""

    index: int
    score: float
    document: str


def common_prefix_length(seqs: Sequence[list[int]]) -> int:
    """Length of the longest common token prefix, leaving at least one token in every sequence."""
    shortest = min(len(s) for s in seqs)
    first = seqs[0]
    n = 0
    while n < shortest - 1 and all(s[n] == first[n] for s in seqs):
        n += 1
    return n


class Reranker(ModelWrapper):
    """Qwen3-Reranker: point-wise relevance scores in [0, 1].

    Example::

        rr = Reranker.from_pretrained("Qwen/Qwen3-Reranker-0.6B")
        rr.rank("What is the capital of China?", ["The capital of China is Beijing.", "Gravity ..."])
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        batch_tokens: int | None = None,
        prefix_reuse: bool = True,
        name_or_path: str = "",
        fingerprint: str = "",
    ) -> None:
        check_positive(batch_tokens, "batch_tokens")
        self.model = model
        self.tokenizer = tokenizer
        self._batch_tokens = batch_tokens
        self.prefix_reuse = prefix_reuse
        self.name_or_path = name_or_path
        self.fingerprint = fingerprint
        self.prefix_ids: list[int] = tokenizer.encode(RERANK_PREFIX, add_special_tokens=False)
        self.suffix_ids: list[int] = tokenizer.encode(RERANK_SUFFIX, add_special_tokens=False)
        if max_length <= len(self.prefix_ids) + len(self.suffix_ids):
            raise ValueError(
                f"max_length={max_length} leaves no room for the pair: the template alone takes "
                f"{len(self.prefix_ids) + len(self.suffix_ids)} tokens"
            )
        self.max_length = max_length
        self.yes_id = self._single_token("yes")
        self.no_id = self._single_token("no")
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else 0

    def _single_token(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
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
    ) -> Reranker:
        """Load a Qwen3-Reranker checkpoint (``*ForCausalLM``) from a directory or the Hub."""
        from transformers import AutoModelForCausalLM

        path = resolve_checkpoint(name_or_path, revision=revision)
        fmt = check_weights(path, allow_pickle=allow_pickle)
        dev = resolve_device(device)
        model = AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=resolve_dtype(dtype, dev),
            use_safetensors=fmt == "safetensors",
            trust_remote_code=trust_remote_code,
        )
        model.to(dev).eval()
        return cls(
            model,
            load_tokenizer(path, trust_remote_code=trust_remote_code),
            max_length=max_length,
            batch_tokens=batch_tokens,
            prefix_reuse=prefix_reuse,
            name_or_path=str(name_or_path),
            fingerprint=fingerprint(path, "reranker", max_length),
        )

    # ------------------------------------------------------------------ tokens
    def tokenize_pairs(
        self, pairs: Sequence[tuple[str, str]], instruction: str | None = None
    ) -> list[list[int]]:
        """``prefix + pair + suffix`` token ids per (query, document); only the pair is truncated."""
        items = check_pairs(pairs)
        if not items:
            return []
        instr = DEFAULT_RERANK_INSTRUCTION if instruction is None else instruction
        if not isinstance(instr, str):
            raise TypeError(f"instruction must be a str, got {type(instr).__name__}")
        room = self.max_length - len(self.prefix_ids) - len(self.suffix_ids)
        texts = [format_rerank_pair(q, d, instr) for q, d in items]
        enc = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=room)
        return [self.prefix_ids + list(x) + self.suffix_ids for x in enc["input_ids"]]

    def collate(self, ids: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """Left-pad a batch onto the device (the last position is then the last real token)."""
        input_ids, mask = pad_left(ids, self.pad_token_id)
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    # ------------------------------------------------------------------ model
    def _yes_no_rows(self) -> torch.Tensor:
        weight = self.model.get_output_embeddings().weight  # (vocab, hidden)
        return weight[[self.no_id, self.yes_id]]  # (2, hidden)

    def last_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final (normed) hidden state at the last real position: (batch, hidden)."""
        hidden = self.model.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state  # (batch, seq, hidden)
        return last_token_pool(hidden, attention_mask)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """[z_no, z_yes] from last-position states: (batch, hidden) -> (batch, 2) float32."""
        return (hidden @ self._yes_no_rows().T).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [no, yes] at the last position, (batch, 2); differentiable (training uses it)."""
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
        """Run the common prefix once, then every remainder against its key/value cache."""
        from transformers import DynamicCache

        base = self.model.base_model
        prefix = torch.tensor([ids[0][:prefix_len]], device=self.device)  # (1, P)
        cached = base(input_ids=prefix, use_cache=True).past_key_values
        layers = [(layer.keys, layer.values) for layer in cached.layers]  # each (1, kv_heads, P, head_dim)

        def run(batch: list[list[int]]) -> torch.Tensor:
            rest_ids, rest_mask = pad_right(batch, self.pad_token_id)  # (B, S)
            rest_ids, rest_mask = rest_ids.to(self.device), rest_mask.to(self.device)
            b = rest_ids.shape[0]
            cache = DynamicCache(
                ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in layers],
                config=self.model.config,
            )
            mask = torch.cat([rest_mask.new_ones((b, prefix_len)), rest_mask], dim=1)  # (B, P + S)
            positions = position_ids_from_mask(rest_mask, offset=prefix_len)  # (B, S)
            hidden = base(
                input_ids=rest_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state  # (B, S, hidden)
            last = last_token_pool(hidden, rest_mask)  # (B, hidden)
            return self.scores_from_logits(self.logits_from_hidden(last))

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
        of two or more reuses its common prefix (when ``prefix_reuse`` is on)."""
        check_positive(batch_tokens, "batch_tokens")
        budget = batch_tokens or self.batch_tokens
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
                    p = common_prefix_length(member_ids) if self.prefix_reuse and len(group) > 1 else 0
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
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
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
        order = np.argsort(-scores, kind="stable")[: top_k or len(docs)]
        return [RankedDocument(int(i), float(scores[i]), docs[i]) for i in order]

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save weights (safetensors) and tokenizer; reload with ``Reranker.from_pretrained``."""
        self.model.save_pretrained(str(path), safe_serialization=True)
        self.tokenizer.save_pretrained(str(path))

    def __repr__(self) -> str:
        return f"Reranker({self.name_or_path!r}, max_length={self.max_length}, device={self.device}, dtype={self.dtype})"


__all__ = ["RankedDocument", "Reranker", "common_prefix_length"]
