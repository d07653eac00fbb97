"""Fine-tuning a Qwen3 reranker with the yes/no SFT loss."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from embedforge.losses import RerankerSFTLoss
from embedforge.training import distributed as D
from embedforge.training.config import RerankerTrainingConfig
from embedforge.training.data import RerankerPair, load_reranker_pairs
from embedforge.training.embedder_trainer import load_for_training, resume_point
from embedforge.training.loop import TrainResult, autocast, intra_op_threads, run_loop


def reranker_step(
    reranker,
    loss_fn: RerankerSFTLoss,
    pairs: list[RerankerPair],
    *,
    global_size: int,
    chunk_size: int | None = None,
    instruction: str | None = None,
    amp: Callable[[], AbstractContextManager] = nullcontext,
) -> float:
    """Loss over the local pairs (scaled so that the sum over processes is the global mean);
    gradients accumulated chunk by chunk (the loss is point-wise, so chunks are independent)."""
    ids: list[list[int]] = []
    for p in pairs:  # instructions may differ between pairs
        ids += reranker.tokenize_pairs([(p.query, p.document)], instruction=p.instruction or instruction)
    labels = torch.tensor([p.label for p in pairs], device=reranker.device)
    size = chunk_size or len(pairs)
    total = 0.0
    for s in range(0, len(pairs), size):
        batch = {**reranker.collate(ids[s : s + size]), "labels": labels[s : s + size]}
        with amp():
            loss = loss_fn(batch) * (
                len(batch["labels"]) / global_size
            )  # mean over the chunk -> share of the global mean
        loss.backward()
        total += float(loss.detach())
    return total


def train_reranker(cfg: RerankerTrainingConfig) -> TrainResult:
    """Train per ``cfg``; the final model is saved in ``cfg.output_dir`` and loads with
    ``Reranker.from_pretrained``. Embedding records in the data become one positive pair
    (label 1) and one pair per negative (label 0)."""
    from embedforge import Reranker

    pairs = load_reranker_pairs(cfg.data)
    with intra_op_threads(cfg.threads):
        info, device = D.setup(cfg.device)
        try:
            resume_from = resume_point(cfg)
            loaded = load_for_training(Reranker, cfg, device, resume_from)
            reranker = loaded.wrapper
            loss_fn = RerankerSFTLoss(reranker, full_vocab=cfg.full_vocab)

            def step_fn(local: list[int]) -> float:
                return reranker_step(
                    reranker,
                    loss_fn,
                    [pairs[i] for i in local],
                    global_size=cfg.batch_size,
                    chunk_size=cfg.chunk_size,
                    instruction=cfg.instruction,
                    amp=lambda: autocast(cfg, device),
                )

            return run_loop(
                cfg,
                info=info,
                device=device,
                params=loaded.params,
                n_records=len(pairs),
                step_fn=step_fn,
                save_model=loaded.save,
                resume_from=resume_from,
                title="train reranker",
            )
        finally:
            D.teardown()
