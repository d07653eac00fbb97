"""The one batching path of embedforge, shared by the embedder, the reranker and the server.

Inputs are tokenized once, sorted by length (longest first, so an out-of-memory error shows up on
the first batch), cut into batches whose padded size ``len(batch) * longest`` stays within a token
budget, run, and put back in input order. Large inputs are streamed in chunks so that token ids
are held for one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

DEFAULT_BATCH_TOKENS = 16384  # accelerators: large batches keep the GPU busy
DEFAULT_CPU_BATCH_TOKENS = 4096  # CPUs: one 512-token text already fills the matmuls; small batches pad less
DEFAULT_CHUNK_SIZE = 8192  # texts tokenized and held at a time


class ProgressBar(Protocol):
    """What the batch runner advances: a tqdm bar or anything with ``update(n)``."""

    def update(self, n: int = 1) -> Any: ...


@dataclass
class BatchPlan:
    """Batches as lists of input positions, plus the figures that describe them."""

    batches: list[list[int]]
    real_tokens: int
    padded_tokens: int

    @property
    def padding_overhead(self) -> float:
        """Fraction of computed positions that are padding."""
        return 0.0 if self.padded_tokens == 0 else 1.0 - self.real_tokens / self.padded_tokens


def default_batch_tokens(device: torch.device | str) -> int:
    """Padded tokens per batch when the caller gives no budget: small on CPU, large on GPU."""
    return DEFAULT_CPU_BATCH_TOKENS if torch.device(device).type == "cpu" else DEFAULT_BATCH_TOKENS


def plan_batches(lengths: Sequence[int], max_tokens: int, max_batch_size: int | None = None) -> BatchPlan:
    """Group positions into batches with ``len(batch) * max(length) <= max_tokens``.

    An input longer than the budget gets a batch of its own. Order inside the plan is by
    decreasing length; callers restore input order from the positions.
    """
    if max_tokens < 1:
        raise ValueError(f"batch token budget must be >= 1, got {max_tokens}")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    padded = 0
    for i in order:
        n = lengths[i]
        width = max(longest, n)
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and ((len(current) + 1) * width > max_tokens or full):
            batches.append(current)
            padded += len(current) * longest
            current, longest, width = [], 0, n
        current.append(i)
        longest = width
    if current:
        batches.append(current)
        padded += len(current) * longest
    return BatchPlan(batches, int(sum(lengths)), padded)


def chunks(n: int, size: int) -> Iterator[range]:
    """Ranges covering 0..n in steps of ``size``."""
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def run_batched(
    ids: Sequence[list[int]],
    fn: Callable[[list[list[int]]], torch.Tensor],
    *,
    max_tokens: int,
    out: torch.Tensor | None = None,
    show_progress: bool = False,
    desc: str = "batches",
    progress: ProgressBar | None = None,
) -> torch.Tensor:
    """Run ``fn`` over token-budget batches of ``ids`` and return its rows in input order.

    ``fn`` takes a list of token-id lists and returns a tensor with one row per list. A given
    ``progress`` bar advances by the inputs of each batch and is left open.
    """
    plan = plan_batches([len(x) for x in ids], max_tokens)
    bar: Any = (
        progress if progress is not None else tqdm(total=len(ids), desc=desc, disable=not show_progress)
    )
    try:
        for batch in plan.batches:
            rows = fn([ids[i] for i in batch])
            if out is None:
                out = rows.new_empty((len(ids), *rows.shape[1:]))
            out[torch.as_tensor(batch, device=out.device)] = rows.to(out.device, out.dtype)
            bar.update(len(batch))
    finally:
        if progress is None:
            bar.close()
    if out is None:  # no inputs
        raise ValueError("run_batched needs at least one input")
    return out


def pad_left(ids: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists: -> input_ids, attention_mask, both (batch, longest)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        if x:
            input_ids[row, width - len(x) :] = torch.as_tensor(x)
            mask[row, width - len(x) :] = 1
    return input_ids, mask


def pad_right(ids: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists: -> input_ids, attention_mask, both (batch, longest)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[row, : len(x)] = 1
    return input_ids, mask


def position_ids_from_mask(attention_mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Positions counted over attended tokens only, so padding never shifts a text's positions."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0) + offset  # (batch, seq)
