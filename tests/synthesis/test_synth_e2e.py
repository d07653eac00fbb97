"""End to end: synth -> filter -> negatives -> a few training steps of a tiny Qwen3 embedder."""

from __future__ import annotations

import json
import math

import pytest
from synth_fake_llm import FakeLLM
from synth_testdata import PERSONAS

from embedforge import Embedder
from embedforge.cli import main
from embedforge.synthesis.store import iter_jsonl
from embedforge.training import EmbedderTrainingConfig, load_embedding_records, train_embedder

TEXTS = [
    "Coral reefs bleach when warm ocean water makes corals expel the algae living inside their tissues.",
    "Steam locomotives convert the heat of burning coal into motion through pistons, rods and driving wheels.",
    "Night shifts disturb the circadian rhythm and raise the risk of sleep disorders among hospital nurses.",
    "A B-tree keeps its keys sorted and balanced so a database finds any row in logarithmic time.",
    "Crop rotation restores soil nutrients and reduces pests on farms without any synthetic chemicals.",
    "Venetian merchants dominated the spice trade between Asia and Europe during the fourteenth century.",
    "Mountain stages of cycling races reward riders with a high power output relative to body weight.",
    "Small businesses can deduct many ordinary expenses, such as rent and equipment, from taxable income.",
    "Arctic sea ice reaches its smallest extent every September after the long summer melt season.",
    "Ancient Egyptians mummified their dead to preserve the body for the journey into the afterlife.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria living in a flour starter.",
    "Vaccines train the immune system to recognise a pathogen before a real infection ever happens.",
]


@pytest.mark.slow
def test_synth_filter_negatives_train(tmp_path, tiny_embedder_dir, minilm_dir, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": f"doc{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(TEXTS))
    )
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in PERSONAS))
    synth, kept, train = tmp_path / "synth.jsonl", tmp_path / "kept.jsonl", tmp_path / "train.jsonl"

    with FakeLLM() as llm:
        assert (
            main(
                [
                    "synth",
                    "retrieval",
                    "--corpus",
                    str(corpus),
                    "--personas",
                    str(personas),
                    "--llm",
                    llm.url,
                    "--model",
                    "fake-llm",
                    "--embedder",
                    str(tiny_embedder_dir),
                    "--out",
                    str(synth),
                    "--lengths",
                    "9-12",
                    "--no-progress",
                ]
            )
            == 0
        )
    assert len(list(iter_jsonl(synth))) == len(TEXTS)

    assert (
        main(
            [
                "synth",
                "filter",
                "--in",
                str(synth),
                "--out",
                str(kept),
                "--model",
                str(minilm_dir),
                "--min-cos",
                "0.7",
                "--no-instruction",
                "--no-progress",
            ]
        )
        == 0
    )
    kept_rows = list(iter_jsonl(kept))
    # MiniLM knows no instructions; the fake's queries are the passages' opening words: most clear 0.7
    assert len(kept_rows) >= 8
    assert all(r["provenance"]["cos"] >= 0.7 for r in kept_rows)
    assert "'min_cos': 0.7" in capsys.readouterr().err

    assert (
        main(
            [
                "synth",
                "negatives",
                "--in",
                str(kept),
                "--out",
                str(train),
                "--embedder",
                str(tiny_embedder_dir),
                "--corpus",
                str(corpus),
                "--k",
                "2",
                "--skip-top",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    records = load_embedding_records(train)  # the trainer's own reader accepts the file
    assert len(records) == len(kept_rows)
    for r in records:
        assert len(r.negatives) == 2 and r.positive not in r.negatives and set(r.negatives) <= set(TEXTS)

    result = train_embedder(
        EmbedderTrainingConfig(
            model=str(tiny_embedder_dir),
            data=str(train),
            output_dir=str(tmp_path / "model"),
            max_steps=3,
            batch_size=4,
            learning_rate=1e-3,
            num_negatives=2,
            max_length=64,
            show_progress=False,
        )
    )
    assert len(result.losses) == 3 and all(math.isfinite(x) and x > 0 for x in result.losses)
    trained = Embedder.from_pretrained(tmp_path / "model")
    assert trained.encode_queries([records[0].query]).shape == (1, 64)
