"""Training losses of the Qwen3 Embedding recipe, one per module."""

from embedforge.losses.matryoshka import MatryoshkaLoss, truncate
from embedforge.losses.qwen3_infonce import Qwen3InfoNCELoss
from embedforge.losses.reranker_sft import RerankerSFTLoss

__all__ = ["MatryoshkaLoss", "Qwen3InfoNCELoss", "RerankerSFTLoss", "truncate"]
