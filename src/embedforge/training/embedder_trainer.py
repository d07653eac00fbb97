"""Fine-tuning an embedder with the Qwen3 improved InfoNCE (optionally Matryoshka), GradCache
chunking and cross-process in-batch terms."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embedforge.losses import MatryoshkaLoss, Qwen3InfoNCELoss
from embedforge.training import distributed as D
from embedforge.training.config import EmbedderTrainingConfig
from embedforge.training.data import EmbeddingRecord, load_embedding_records
from embedforge.training.loop import TrainResult, autocast, intra_op_threads, latest_checkpoint, run_loop
from embedforge.training.lora import apply_lora, load_adapter, save_merged

ROLES = ("query", "positive", "negatives")


def text_ids(texts: list[str]) -> torch.Tensor:
    """A 64-bit id per text (blake2b), so the loss can tell identical documents apart from
    near-identical embeddings (the false-negative rule ``d_j == d_i+``)."""
    return torch.tensor(
        [
            int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little", signed=True)
            for t in texts
        ],
        dtype=torch.long,
    )


@dataclass
class EmbedderBatch:
    """Token ids of one (local) batch: n queries, n positives, n * K negatives (instance-major),
    and the text ids of the documents."""

    query: list[list[int]]
    positive: list[list[int]]
    negatives: list[list[int]]
    num_negatives: int
    positive_ids: torch.Tensor  # (n,)
    negative_ids: torch.Tensor  # (n, K)


def embedder_batch(
    embedder, records: list[EmbeddingRecord], num_negatives: int, instruction: str | None = None
) -> EmbedderBatch:
    """Tokenize records with the embedder's own templates (query prompt per instruction)."""
    query: list[list[int]] = []
    for r in records:  # instructions may differ between records
        query += embedder.tokenize([r.query], prompt=embedder.query_prompt(r.instruction or instruction))
    doc_prompt = embedder.side_prompt("document")
    positive = embedder.tokenize([r.positive for r in records], prompt=doc_prompt)
    neg_texts = [d for r in records for d in r.negatives[:num_negatives]]
    negatives = embedder.tokenize(neg_texts, prompt=doc_prompt) if neg_texts else []
    pos_ids = text_ids([r.positive for r in records])
    neg_ids = text_ids(neg_texts).view(len(records), num_negatives)
    return EmbedderBatch(query, positive, negatives, num_negatives, pos_ids, neg_ids)


def _chunks(n: int, size: int | None) -> list[slice]:
    size = size or max(n, 1)
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def embedder_step(
    embedder,
    loss_fn: torch.nn.Module,
    batch: EmbedderBatch,
    *,
    chunk_size: int | None = None,
    amp: Callable[[], AbstractContextManager] = nullcontext,
) -> float:
    """Loss over the local batch, gradients accumulated into the model's parameters.

    Without ``chunk_size`` each role is encoded in one pass with gradients. With it
    (GradCache, Gao et al. 2021): (1) every role is encoded ``chunk_size`` texts at a time without
    gradients, (2) the loss and its gradient w.r.t. the embeddings are computed over the whole
    batch (gathered across processes), (3) each chunk is encoded again with gradients, under the
    RNG state of pass 1, and back-propagated with its slice of that gradient. Loss and parameter
    gradients equal the unchunked computation; memory holds one chunk's activations.
    """
    n = len(batch.query)
    texts = {"query": batch.query, "positive": batch.positive, "negatives": batch.negatives}

    def encode(ids: list[list[int]]) -> torch.Tensor:
        with amp():
            return embedder.forward(**embedder.collate(ids)).float()

    def loss_of(emb: dict[str, torch.Tensor]) -> torch.Tensor:
        q, p = emb["query"], emb["positive"]
        neg = (
            emb["negatives"].view(n, batch.num_negatives, -1) if batch.num_negatives else None
        )  # (n, K, dim)
        all_q, offset = D.gather(q)
        all_p, _ = D.gather(p)
        all_n = D.gather(neg)[0] if neg is not None else None
        pos_ids, neg_ids = batch.positive_ids.to(q.device), batch.negative_ids.to(q.device)
        # nn.Module.__getattr__ is typed Tensor | Module; loss_fn is an embedding loss
        return loss_fn.loss_from_embeddings(  # type: ignore[operator]
            q,
            p,
            neg,
            all_query=all_q,
            all_positive=all_p,
            all_negatives=all_n,
            offset=offset,
            positive_ids=pos_ids,
            negative_ids=neg_ids,
            all_positive_ids=D.gather(pos_ids)[0],
            all_negative_ids=D.gather(neg_ids)[0],
        )

    roles = [r for r in ROLES if texts[r]]
    if chunk_size is None:
        loss = loss_of({r: encode(texts[r]) for r in roles})
        loss.backward()
        return float(loss.detach())

    cached: dict[str, list[tuple[slice, torch.Tensor, torch.Tensor]]] = {}
    with torch.no_grad():
        for r in roles:
            cached[r] = []
            for sl in _chunks(len(texts[r]), chunk_size):
                rng = torch.get_rng_state()  # dropout must draw the same masks in pass 3
                cached[r].append((sl, rng, encode(texts[r][sl])))
    leaves = {r: torch.cat([e for _, _, e in cached[r]]).requires_grad_(True) for r in roles}
    loss = loss_of(leaves)
    loss.backward()
    after = torch.get_rng_state()
    for r in roles:
        grad = leaves[r].grad
        if grad is None:  # a role the configured loss does not use
            continue
        for sl, rng, _ in cached[r]:
            torch.set_rng_state(rng)
            emb = encode(texts[r][sl])  # (chunk, dim), with gradients this time
            emb.backward(gradient=grad[sl])
    torch.set_rng_state(after)
    return float(loss.detach())


def build_embedding_loss(cfg: EmbedderTrainingConfig, embedder) -> torch.nn.Module:
    base = Qwen3InfoNCELoss(
        embedder,
        temperature=cfg.temperature,
        margin=cfg.margin,
        query_query=cfg.query_query,
        doc_doc=cfg.doc_doc,
        query_doc=cfg.query_doc,
        in_batch_hard_negatives=cfg.in_batch_hard_negatives,
        mask_false_negatives=cfg.mask_false_negatives,
    )
    if cfg.matryoshka_dims:
        return MatryoshkaLoss(base, cfg.matryoshka_dims, cfg.matryoshka_weights)
    return base


@dataclass
class Loaded:
    """A model wrapper ready to train, its trainable parameters, and how to save it."""

    wrapper: Any
    params: list[torch.nn.Parameter]
    model_max_length: int  # the checkpoint's own max length, written back on save

    def save(self, path: Path) -> None:
        """Save (LoRA merged) with the checkpoint's max length, not the training one."""
        train_length = self.wrapper.max_length
        self.wrapper.max_length = self.model_max_length
        try:
            save_merged(self.wrapper, path)
        finally:
            self.wrapper.max_length = train_length


def load_for_training(loader, cfg, device: torch.device, resume_from: Path | None) -> Loaded:
    """Load the model (from the checkpoint when resuming full fine-tuning), add LoRA, set train mode.

    Training truncates inputs to ``cfg.max_length``; saved models keep the checkpoint's own.
    """
    from_checkpoint = resume_from is not None and cfg.lora is None
    spec = cfg.model_spec().replace(device=str(device))
    if from_checkpoint:  # a local directory: the Hub revision applied to the starting model only
        spec = spec.replace(model=str(resume_from), revision=None)
    wrapper = spec.load_reranker() if loader.__name__ == "Reranker" else spec.load_embedder()
    model_max_length = wrapper.max_length
    wrapper.max_length = min(cfg.max_length, model_max_length)
    torch.manual_seed(cfg.seed)  # LoRA initialisation
    if cfg.lora is not None:
        params = apply_lora(wrapper.model, cfg.lora)
        if resume_from is not None:
            load_adapter(wrapper.model, resume_from)
    else:
        params = [p for p in wrapper.model.parameters() if p.requires_grad]
    if cfg.gradient_checkpointing:
        model = wrapper.model
        if hasattr(
            model, "activation_checkpointing_enable"
        ):  # transformers >= 5.24 (the old name is deprecated)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora is not None and hasattr(wrapper.model, "enable_input_require_grads"):
            wrapper.model.enable_input_require_grads()
    wrapper.model.train()
    torch.manual_seed(cfg.seed)  # dropout
    return Loaded(wrapper, params, model_max_length)


def resume_point(cfg) -> Path | None:
    if not cfg.resume:
        return None
    ckpt = latest_checkpoint(cfg.output_dir)
    if ckpt is None:
        raise FileNotFoundError(
            f"resume is set but {Path(cfg.output_dir) / 'checkpoints'} holds no complete checkpoint"
        )
    return ckpt


def train_embedder(cfg: EmbedderTrainingConfig) -> TrainResult:
    """Train per ``cfg``; under torchrun each process takes an equal share of every batch.

    The final model is saved in ``cfg.output_dir`` and loads with ``Embedder.from_pretrained``.
    """
    from embedforge import Embedder

    records = load_embedding_records(cfg.data)
    short = [i for i, r in enumerate(records) if len(r.negatives) < cfg.num_negatives]
    if short:
        raise ValueError(
            f"{len(short)} records of {cfg.data} hold fewer than num_negatives={cfg.num_negatives} negatives "
            f"(first: record {short[0] + 1} with {len(records[short[0]].negatives)}); lower num_negatives or mine more"
        )
    with intra_op_threads(cfg.threads):
        info, device = D.setup(cfg.device)
        try:
            resume_from = resume_point(cfg)
            loaded = load_for_training(Embedder, cfg, device, resume_from)
            embedder = loaded.wrapper
            loss_fn = build_embedding_loss(cfg, embedder)

            def step_fn(local: list[int]) -> float:
                batch = embedder_batch(
                    embedder, [records[i] for i in local], cfg.num_negatives, cfg.instruction
                )
                return embedder_step(
                    embedder, loss_fn, batch, chunk_size=cfg.chunk_size, amp=lambda: autocast(cfg, device)
                )

            return run_loop(
                cfg,
                info=info,
                device=device,
                params=loaded.params,
                n_records=len(records),
                step_fn=step_fn,
                save_model=loaded.save,
                resume_from=resume_from,
                title="train embedder",
            )
        finally:
            D.teardown()
