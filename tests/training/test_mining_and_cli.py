"""Hard-negative mining against a direct ranking, and the CLI commands end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedforge import Embedder
from embedforge.cli import main as cli_main
from embedforge.training.mining import mine_hard_negatives

CORPUS = [
    "Water boils at 100 degrees Celsius at sea level.",
    "At high altitude water boils at a lower temperature.",
    "Boiling point depends on atmospheric pressure.",
    "Ice melts at zero degrees Celsius.",
    "Steam is water in its gaseous state.",
    "Rust guarantees memory safety without a garbage collector.",
    "Python is a dynamically typed programming language.",
    "The borrow checker enforces ownership rules in Rust.",
    "Mount Everest is the highest mountain above sea level.",
    "K2 is the second highest mountain on Earth.",
    "Espresso forces hot water through finely ground coffee.",
    "A black hole is a region where gravity prevents light from escaping.",
]
RECORDS = [
    {"query": "at what temperature does water boil", "positive": CORPUS[0], "instruction": None, "id": 1},
    {"query": "at what temperature does water boil", "positive": CORPUS[1], "instruction": None, "id": 2},
    {"query": "memory safety in rust", "positive": CORPUS[5], "instruction": None, "id": 3},
]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return Embedder.from_pretrained(minilm_dir)


def test_mining_matches_a_direct_ranking(minilm):
    mined = mine_hard_negatives(minilm, RECORDS, CORPUS, k=3, skip_top=1)
    d = minilm.encode_documents(CORPUS)
    for rec, out in zip(RECORDS, mined, strict=True):
        assert out["id"] == rec["id"] and out["positive"] == rec["positive"]  # other keys kept
        order = np.argsort(-(minilm.encode_queries([rec["query"]]) @ d.T)[0], kind="stable")
        positives = {r["positive"] for r in RECORDS if r["query"] == rec["query"]}
        expected = [CORPUS[i] for i in order[1:] if CORPUS[i] not in positives][:3]
        assert out["negatives"] == expected
        assert not positives & set(out["negatives"])
    assert "negatives" not in RECORDS[0]  # input untouched
    # both positives of the shared query are excluded from each of its records
    assert CORPUS[1] not in mined[0]["negatives"] and CORPUS[0] not in mined[1]["negatives"]
    # precomputed document embeddings give the same result
    assert mine_hard_negatives(minilm, RECORDS, CORPUS, k=3, skip_top=1, doc_embeddings=d) == mined


def test_mining_errors(minilm):
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        mine_hard_negatives(minilm, RECORDS, CORPUS, k=0)
    with pytest.raises(ValueError, match="needs 'query' and 'positive'"):
        mine_hard_negatives(minilm, [{"query": "q"}], CORPUS)
    with pytest.raises(ValueError, match="doc_embeddings has 2 rows for a corpus of 12"):
        mine_hard_negatives(minilm, RECORDS, CORPUS, doc_embeddings=np.zeros((2, 384), dtype=np.float32))


def _beir(root):
    root.mkdir()
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(CORPUS))
    )
    (root / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "memory safety in rust"})
        + "\n"
        + json.dumps({"_id": "q2", "text": "highest mountain"})
        + "\n"
    )
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td5\t1\nq2\td8\t1\n")
    return root


def test_cli_mine_train_merge(minilm_dir, train_embedder_dir, tmp_path):
    data = _beir(tmp_path / "beir")
    out = tmp_path / "mined.jsonl"
    assert (
        cli_main(
            [
                "mine-negatives",
                "--model",
                str(minilm_dir),
                "--data",
                str(data),
                "--k",
                "2",
                "--skip-top",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["query"] for r in rows] == ["memory safety in rust", "highest mountain"]
    assert all(len(r["negatives"]) == 2 and r["positive"] not in r["negatives"] for r in rows)

    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"model: {train_embedder_dir}\ndata: {out}\noutput_dir: {tmp_path / 'run'}\nmax_steps: 1\nbatch_size: 2\n"
        "num_negatives: 2\nshow_progress: false\n"
    )
    assert cli_main(["train", "embedder", str(cfg)]) == 0
    assert Embedder.from_pretrained(tmp_path / "run").encode(["x"]).shape == (1, 64)

    assert (
        cli_main(
            [
                "merge",
                str(train_embedder_dir),
                str(tmp_path / "run"),
                "--t",
                "0.5",
                "--out",
                str(tmp_path / "m"),
                "--quiet",
            ]
        )
        == 0
    )
    assert Embedder.from_pretrained(tmp_path / "m").encode(["x"]).shape == (1, 64)
    with pytest.raises(SystemExit):
        cli_main(["merge", str(tmp_path / "m"), "--method", "cubic", "--out", str(tmp_path / "x")])
