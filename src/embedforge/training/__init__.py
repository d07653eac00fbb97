"""Training: data records, hard-negative mining, configs, the embedder and reranker trainers."""

from embedforge.training.config import (
    EmbedderTrainingConfig,
    LoraSettings,
    Precision,
    RerankerTrainingConfig,
    load_config,
)
from embedforge.training.data import (
    EmbeddingRecord,
    RerankerPair,
    beir_train_records,
    load_embedding_records,
    write_jsonl,
)
from embedforge.training.embedder_trainer import train_embedder
from embedforge.training.loop import TrainResult
from embedforge.training.mining import mine_hard_negatives
from embedforge.training.reranker_trainer import train_reranker

__all__ = [
    "EmbedderTrainingConfig",
    "EmbeddingRecord",
    "LoraSettings",
    "Precision",
    "RerankerPair",
    "RerankerTrainingConfig",
    "TrainResult",
    "beir_train_records",
    "load_config",
    "load_embedding_records",
    "mine_hard_negatives",
    "train_embedder",
    "train_reranker",
    "write_jsonl",
]
