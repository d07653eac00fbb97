"""The mteb adapter, called through mteb's encoder interface (offline: task metadata only)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from embedforge import prompts
from embedforge.evaluation.mteb_adapter import MtebEncoder, mteb_instruction

TEXTS = ["A man is playing a guitar.", "Gravity pulls objects toward each other.", "The cat sleeps."]


def batches(texts, size=2):
    return [{"text": texts[i : i + size]} for i in range(0, len(texts), size)]


def meta(name, type_, prompt=None):
    return SimpleNamespace(name=name, type=type_, prompt=prompt)


def test_official_side_rules():
    scifact = meta("SciFact", "Retrieval")
    assert mteb_instruction(scifact, "query") == prompts.QWEN3_RETRIEVAL_INSTRUCTIONS["SciFact"]
    assert mteb_instruction(scifact, "document") is None
    arguana = meta("ArguAna", "Retrieval")
    assert mteb_instruction(arguana, "document") == prompts.QWEN3_RETRIEVAL_INSTRUCTIONS["ArguAna"]
    for side in ("query", "document", None):
        assert mteb_instruction(meta("STSBenchmark", "STS"), side) == "Retrieve semantically similar text"
        assert mteb_instruction(meta("Tatoeba", "BitextMining"), side) == "Retrieve parallel sentences"
    assert mteb_instruction(meta("Banking77Classification", "Classification"), None) == (
        "Given a online banking query, find the corresponding intents"
    )
    # unknown task: its own metadata prompt, then the model-card default for retrieval queries
    assert mteb_instruction(meta("NewRetrieval", "Retrieval", {"query": "Find it"}), "query") == "Find it"
    assert mteb_instruction(meta("OtherRetrieval", "Retrieval"), "query") == prompts.DEFAULT_QUERY_INSTRUCTION


def test_qwen3_encode_uses_official_prompts_and_dim(tiny_embedder):
    model = MtebEncoder(tiny_embedder, dim=32)
    scifact = meta("SciFact", "Retrieval")
    q = model.encode(
        batches(TEXTS), task_metadata=scifact, hf_split="test", hf_subset="default", prompt_type="query"
    )
    expected_prompt = prompts.query_prompt(prompts.QWEN3_RETRIEVAL_INSTRUCTIONS["SciFact"])
    assert model.last_prompt == expected_prompt
    ref = tiny_embedder.encode(TEXTS, prompt=expected_prompt)[:, :32]
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(q, ref, atol=1e-5)
    assert q.shape == (3, 32)
    d = model.encode(
        batches(TEXTS), task_metadata=scifact, hf_split="test", hf_subset="default", prompt_type="document"
    )
    assert model.last_prompt == ""
    assert not np.allclose(d, q)
    model.encode(
        batches(TEXTS), task_metadata=meta("STSBenchmark", "STS"), hf_split="test", hf_subset="default"
    )
    assert model.last_prompt == "Instruct: Retrieve semantically similar text\nQuery:"


def test_user_instruction_overrides_table(tiny_embedder):
    model = MtebEncoder(tiny_embedder, instructions={"scifact": "Find evidence"})
    model.encode(TEXTS, task_metadata=meta("SciFact", "Retrieval"), prompt_type="query")
    assert model.last_prompt == "Instruct: Find evidence\nQuery:"


def test_non_instruction_model_gets_no_prompt_and_matches_embedder(minilm):
    model = MtebEncoder(minilm)
    assert not model.use_instructions
    out = model.encode(
        batches(TEXTS),
        task_metadata=meta("SciFact", "Retrieval"),
        hf_split="test",
        hf_subset="default",
        prompt_type="query",
    )
    assert model.last_prompt == ""
    np.testing.assert_allclose(out, minilm.encode(TEXTS), atol=1e-6)
    sim = model.similarity(out, out)
    assert sim.shape == (3, 3)
    np.testing.assert_allclose(np.diag(sim.numpy()), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.similarity_pairwise(out, out).numpy(), 1.0, atol=1e-5)


def test_bad_inputs(tiny_embedder):
    with pytest.raises(ValueError, match="dim=65 is out of range"):
        MtebEncoder(tiny_embedder, dim=65)
    with pytest.raises(ValueError, match="between 32 and 64"):
        MtebEncoder(tiny_embedder, dim=16)
    with pytest.raises(TypeError, match="cannot read texts"):
        MtebEncoder(tiny_embedder).encode([{"image": [1]}], task_metadata=meta("SciFact", "Retrieval"))


def test_real_mteb_protocol_and_metadata(tiny_embedder):
    mteb = pytest.importorskip("mteb", reason="the mteb package is optional (pip install mteb)")
    from mteb.models import EncoderProtocol

    model = MtebEncoder(tiny_embedder, dim=32)
    assert isinstance(model, EncoderProtocol)
    assert model.mteb_model_meta.embed_dim == 32
    assert model.mteb_model_meta.use_instructions is True
    task = mteb.get_task("SciFact")  # metadata only, nothing is downloaded
    from mteb.types import PromptType

    model.encode(
        batches(TEXTS),
        task_metadata=task.metadata,
        hf_split="test",
        hf_subset="default",
        prompt_type=PromptType.query,
    )
    assert model.last_prompt == prompts.query_prompt(prompts.QWEN3_RETRIEVAL_INSTRUCTIONS["SciFact"])
    sts = mteb.get_task("STSBenchmark")
    model.encode(batches(TEXTS), task_metadata=sts.metadata, hf_split="test", hf_subset="default")
    assert model.last_prompt == prompts.query_prompt("Retrieve semantically similar text")


@pytest.mark.shared_data
def test_mteb_evaluate_runs_the_adapter_offline(tiny_embedder, scifact_dir):
    """mteb's own retrieval pipeline (SciFact metadata, local data subset) over our adapter gives
    the figures of our evaluator, instructions included."""
    import json

    mteb = pytest.importorskip("mteb", reason="the mteb package is optional (pip install mteb)")
    datasets = pytest.importorskip("datasets", reason="mteb needs datasets")
    from embedforge.evaluation import evaluate_retrieval, load_beir

    data = load_beir(scifact_dir, "test").subset(6, extra_docs=15)
    keep = set(data.corpus_ids)
    with (scifact_dir / "corpus.jsonl").open() as f:
        rows = [r for r in map(json.loads, f) if r["_id"] in keep]
    task = mteb.get_task("SciFact", eval_splits=["test"])
    corpus = datasets.Dataset.from_dict(
        {
            "id": [r["_id"] for r in rows],
            "title": [r["title"] for r in rows],
            "text": [r["text"] for r in rows],
        }
    )
    queries = datasets.Dataset.from_dict({"id": data.query_ids, "text": data.query_texts})
    task.dataset = {
        "default": {
            "test": {"corpus": corpus, "queries": queries, "relevant_docs": data.qrels, "top_ranked": None}
        }
    }
    task.data_loaded = True  # the local subset replaces the Hub download

    model = MtebEncoder(tiny_embedder)
    result = mteb.evaluate(
        model, task, cache=None, encode_kwargs={"batch_size": 8, "show_progress_bar": False}
    )
    scores = result.task_results[0].scores["test"][0]
    ours = evaluate_retrieval(tiny_embedder, data, show_progress=False).first_stage.metrics
    assert scores["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-5)
    assert scores["recall_at_100"] == pytest.approx(ours["recall@100"], abs=1e-5)
    assert scores["mrr_at_10"] == pytest.approx(ours["mrr@10"], abs=1e-5)
    assert scores["map_at_100"] == pytest.approx(ours["map@100"], abs=1e-5)
