"""Evaluation on real data: retrieval (+ reranking, Matryoshka sweeps), STS, bitext, cross-lingual.

``embedforge eval retrieval|sts|bitext|crosslingual`` runs them from the command line; the MTEB
adapter (:mod:`embedforge.evaluation.mteb_adapter`) lets ``mteb`` drive an embedforge model.
"""

from embedforge.evaluation.bitext import BitextReport, evaluate_bitext
from embedforge.evaluation.crosslingual import CrosslingualReport, evaluate_crosslingual
from embedforge.evaluation.data import (
    BitextData,
    PairData,
    RetrievalData,
    load_beir,
    load_bitext,
    load_sts_csv,
)
from embedforge.evaluation.instructions import InstructionChoice, TaskKind, choose_instructions
from embedforge.evaluation.metrics import DEFAULT_METRICS, RetrievalScores, correlation, retrieval_scores
from embedforge.evaluation.mteb_adapter import MtebEncoder
from embedforge.evaluation.retrieval import RetrievalReport, evaluate_retrieval
from embedforge.evaluation.sts import StsReport, evaluate_sts

__all__ = [
    "DEFAULT_METRICS",
    "BitextData",
    "BitextReport",
    "CrosslingualReport",
    "InstructionChoice",
    "MtebEncoder",
    "PairData",
    "RetrievalData",
    "RetrievalReport",
    "RetrievalScores",
    "StsReport",
    "TaskKind",
    "choose_instructions",
    "correlation",
    "evaluate_bitext",
    "evaluate_crosslingual",
    "evaluate_retrieval",
    "evaluate_sts",
    "load_beir",
    "load_bitext",
    "load_sts_csv",
    "retrieval_scores",
]
