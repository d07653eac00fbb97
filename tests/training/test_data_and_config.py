"""Records, the BEIR converter, configs from YAML/JSON, and their errors."""

from __future__ import annotations

import json

import pytest

from embedforge.training import EmbedderTrainingConfig, RerankerTrainingConfig, load_config
from embedforge.training.config import LoraSettings, Precision
from embedforge.training.data import (
    beir_train_records,
    load_embedding_records,
    load_reranker_pairs,
    write_jsonl,
)


def test_records_round_trip_and_extra_keys(embedding_jsonl, tmp_path):
    recs = load_embedding_records(embedding_jsonl)
    assert len(recs) == 8 and recs[0].negatives and recs[0].model_extra == {"provenance": "test"}
    assert write_jsonl(recs, tmp_path / "again.jsonl") == 8
    assert load_embedding_records(tmp_path / "again.jsonl") == recs


def test_bad_records_name_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"query": "q", "positive": "d"}\n{"query": "q"}\n')
    with pytest.raises(ValueError, match=r"record 2 .*positive"):
        load_embedding_records(p)
    p.write_text('{"query": "q", "positive": "d"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_embedding_records(p)
    p.write_text('{"query": "q", "document": "d", "label": 3}\n')
    with pytest.raises(ValueError, match="label"):
        load_reranker_pairs(p)


def test_reranker_pairs_from_both_layouts(reranker_jsonl):
    pairs = load_reranker_pairs(reranker_jsonl)
    # 8 embedding records with 1 negative -> 16 pairs, plus one labelled pair
    assert len(pairs) == 17
    assert [p.label for p in pairs[:2]] == [1, 0] and pairs[-1].label == 1 and pairs[-1].query == "espresso"


@pytest.mark.shared_data
def test_beir_train_qrels_converter_on_scifact(shared_data_dir):
    records, corpus = beir_train_records(shared_data_dir / "scifact", "train")
    assert len(records) == 919  # one per train qrel (809 queries)
    assert len({r.model_extra["query_id"] for r in records}) == 809  # two pairs of queries share a text
    assert len(corpus) == 5183
    assert all(r.positive in corpus and r.negatives == [] for r in records[:50])
    with pytest.raises(FileNotFoundError, match="split 'dev'"):
        beir_train_records(shared_data_dir / "scifact", "dev")


def test_config_from_yaml_and_json(tmp_path):
    yaml_text = """
model: /models/m
data: train.jsonl
output_dir: out
max_steps: 10
batch_size: 4
learning_rate: 1.0e-4
precision: bf16
lora: {r: 8, target_modules: [q_proj, v_proj]}
matryoshka_dims: [64, 32]
"""
    (tmp_path / "c.yaml").write_text(yaml_text)
    cfg = load_config(tmp_path / "c.yaml", EmbedderTrainingConfig)
    assert cfg.precision is Precision.BF16 and cfg.lora == LoraSettings(
        r=8, target_modules=["q_proj", "v_proj"]
    )
    assert cfg.temperature == 0.01 and cfg.margin == 0.1 and cfg.in_batch_hard_negatives
    (tmp_path / "c.json").write_text(
        json.dumps({"model": "m", "data": "d", "output_dir": "o", "max_steps": 1, "batch_size": 2})
    )
    assert load_config(tmp_path / "c.json", RerankerTrainingConfig).full_vocab is False
    # every field documents itself
    for cls in (EmbedderTrainingConfig, RerankerTrainingConfig):
        props = cls.model_json_schema()["properties"]
        assert all(v.get("description") for v in props.values()), [
            k for k, v in props.items() if not v.get("description")
        ]


@pytest.mark.parametrize(
    "patch,match",
    [
        ({"max_steps": 0}, r"max_steps: Input should be greater than 0 \(got 0\)"),
        ({"temperatur": 0.1}, "temperatur: Extra inputs are not permitted"),
        ({"precision": "fp16"}, "precision: Input should be 'fp32' or 'bf16'"),
        ({"warmup_steps": 50}, r"warmup_steps \(50\) exceeds max_steps \(10\)"),
        ({"matryoshka_weights": [1.0]}, "matryoshka_weights needs matryoshka_dims"),
    ],
)
def test_config_errors_name_the_field(tmp_path, patch, match):
    raw = {"model": "m", "data": "d", "output_dir": "o", "max_steps": 10, "batch_size": 2, **patch}
    (tmp_path / "c.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=match):
        load_config(tmp_path / "c.json", EmbedderTrainingConfig)


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml", EmbedderTrainingConfig)
    (tmp_path / "c.toml").write_text("x = 1")
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.json"):
        load_config(tmp_path / "c.toml", EmbedderTrainingConfig)
