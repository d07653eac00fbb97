"""Small training sets written to disk as JSONL (the trainer reads them through the real path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

TOPICS = [
    ("photosynthesis in plants", "Plants turn light into chemical energy in chloroplasts."),
    ("the boiling point of water", "Water boils at 100 degrees Celsius at sea level."),
    ("how vaccines work", "Vaccines train the immune system to recognise a pathogen."),
    ("rust programming language", "Rust guarantees memory safety without a garbage collector."),
    ("the french revolution", "The French Revolution began in 1789 with the storming of the Bastille."),
    ("black holes", "A black hole is a region where gravity prevents even light from escaping."),
    ("coffee brewing", "Espresso forces hot water through finely ground coffee under pressure."),
    ("the tallest mountain", "Mount Everest is the highest mountain above sea level."),
]


def embedding_records(k: int = 2) -> list[dict]:
    docs = [d for _, d in TOPICS]
    rows = []
    for i, (q, d) in enumerate(TOPICS):
        negs = [docs[(i + j + 1) % len(docs)] for j in range(k)]
        rows.append({"instruction": None, "query": q, "positive": d, "negatives": negs, "provenance": "test"})
    return rows


def write(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def embedding_jsonl(tmp_path) -> Path:
    return write(embedding_records(), tmp_path / "train.jsonl")


@pytest.fixture
def reranker_jsonl(tmp_path) -> Path:
    rows = embedding_records(k=1)
    rows.append({"query": "espresso", "document": "Espresso forces hot water through coffee.", "label": 1})
    return write(rows, tmp_path / "rerank.jsonl")


@pytest.fixture
def make_records():
    """``make_records(k)``: the eight topic records with k negatives each (dicts)."""
    return embedding_records


@pytest.fixture(scope="session")
def train_embedder_dir(tmp_path_factory, tiny_embedder_dir) -> Path:
    """The tiny Qwen3 embedder with its projection weights scaled x5.

    At the default init (std 0.02) the layers barely touch the residual stream, so the pooled
    <|endoftext|> state is nearly the same for every text (cosine ~0.9999) and float rounding alone
    decides which embeddings compare equal. Scaled, texts get distinct embeddings (cosine ~0.7-0.9).
    """
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("tiny-qwen3-train")
    shutil.copytree(tiny_embedder_dir, out, dirs_exist_ok=True)
    state = load_file(out / "model.safetensors")
    state = {k: v * 5.0 if k.endswith("proj.weight") else v for k, v in state.items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out
