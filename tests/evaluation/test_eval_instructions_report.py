"""The official instruction rules, the Matryoshka helpers and the dims plot."""

from __future__ import annotations

import numpy as np
import pytest

from embedforge import prompts
from embedforge.evaluation.encoding import parse_dims, truncate_normalize
from embedforge.evaluation.instructions import TaskKind, canonical_task_name, choose_instructions
from embedforge.evaluation.report import plot_dims
from embedforge.evaluation.retrieval import StageReport


def test_retrieval_instructs_the_query_only():
    c = choose_instructions("scifact", TaskKind.RETRIEVAL, instruction_aware=True)
    assert c.task == "SciFact" and c.source.value == "official"
    assert c.query == "Given a scientific claim, retrieve documents that support or refute the claim"
    assert c.document is None


def test_symmetric_retrieval_sts_and_bitext_instruct_both_sides():
    arguana = choose_instructions("ArguAna", TaskKind.RETRIEVAL, instruction_aware=True)
    assert arguana.query == arguana.document == "Given a claim, find documents that refute the claim"
    sts = choose_instructions("stsb-en-test", TaskKind.STS, instruction_aware=True)
    assert sts.query == sts.document == "Retrieve semantically similar text"
    bt = choose_instructions(None, TaskKind.BITEXT, instruction_aware=True)
    assert bt.query == bt.document == "Retrieve parallel sentences"


def test_unknown_task_default_override_and_plain_models():
    c = choose_instructions("my-corpus", TaskKind.RETRIEVAL, instruction_aware=True)
    assert c.source.value == "default" and c.query == prompts.DEFAULT_QUERY_INSTRUCTION
    u = choose_instructions("SciFact", TaskKind.RETRIEVAL, instruction_aware=True, user_instruction="Find it")
    assert (u.query, u.document, u.source.value) == ("Find it", None, "user")
    u = choose_instructions("STSBenchmark", TaskKind.STS, instruction_aware=False, user_instruction="Same?")
    assert (u.query, u.document) == ("Same?", "Same?")
    n = choose_instructions("SciFact", TaskKind.RETRIEVAL, instruction_aware=False)
    assert (n.query, n.document, n.source.value) == (None, None, "none")
    assert canonical_task_name("NFCORPUS") == "NFCorpus"


def test_truncate_normalize_and_parse_dims():
    x = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)
    np.testing.assert_allclose(truncate_normalize(x, 2), [[0.6, 0.8]])
    np.testing.assert_allclose(np.linalg.norm(truncate_normalize(x, None), axis=1), 1.0)
    with pytest.raises(ValueError, match="dimension 4 is out of range"):
        truncate_normalize(x, 4)
    assert parse_dims("256, 32,64,32") == [32, 64, 256]
    assert parse_dims(None) == []
    with pytest.raises(ValueError, match="bad dimension '0'"):
        parse_dims("0,32")
    with pytest.raises(
        ValueError, match="dim=128 is out of range: Matryoshka dims must be between 32 and 64"
    ):
        parse_dims("32,128", full=64)
    with pytest.raises(ValueError, match="dim=16 is out of range"):  # the library's MIN_DIM holds here too
        parse_dims("16,64")


def test_plot_dims_writes_a_png(tmp_path):
    stages = [
        StageReport(f"embedding@{d}", {"ndcg@10": v}, 3, dim=d) for d, v in [(32, 0.3), (64, 0.5), (128, 0.6)]
    ]
    path = plot_dims(stages, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no dimension sweep"):
        plot_dims([], tmp_path / "empty.png")
