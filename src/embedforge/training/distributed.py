"""torch.distributed in one place: process-group setup, the differentiable all-gather of
embeddings for in-batch terms, and the summing of gradients and metrics across processes.

Why not DDP: the in-batch loss of each process depends on every process's embeddings, so the
gradient of the global loss reaches a process's parameters through the other processes' losses
too. :class:`GatherWithGrad` sends those gradient parts back (an all-reduce of the gathered
gradient in backward, supported by gloo and NCCL alike), and :func:`all_reduce_grads` then sums
the parameter gradients, which equals the gradient of one process holding the combined batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); pick the device.

    gloo on CPU, NCCL on CUDA. Without torchrun this is a no-op returning rank 0 of 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local), dev
    return DistInfo(), dev


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 (equal shapes on every rank); backward sums the gradient of the
    gathered tensor over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.n = rank, tensor.shape[0]
        return torch.cat(parts, dim=0)  # (world * n, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def _comm_device() -> torch.device:
    """Where small bookkeeping tensors must live for the backend (CUDA for NCCL)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(all ranks' tensors concatenated, offset of this rank's rows)``; identity in one process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor, 0
    dev = _comm_device()
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], dtype=torch.long, device=dev))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(
            f"every process must hold the same number of rows to gather, got {[int(s) for s in sizes]}"
        )
    return GatherWithGrad.apply(tensor), dist.get_rank() * tensor.shape[0]


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum parameter gradients over processes (a parameter without gradient counts as zero)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for p in params:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def sum_over_ranks(value: float) -> float:
    """Sum a Python number over processes (local losses add up to the global loss)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
