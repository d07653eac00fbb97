"""``embedforge eval ...`` end to end through the real command-line entry point, on real files."""

from __future__ import annotations

import json

import pytest

from embedforge.cli import main
from embedforge.evaluation.data import load_beir

pytestmark = pytest.mark.shared_data


def write_beir(data, folder):
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for i, t in zip(data.corpus_ids, data.corpus_texts, strict=True):
            f.write(json.dumps({"_id": i, "title": "", "text": t}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for i, t in zip(data.query_ids, data.query_texts, strict=True):
            f.write(json.dumps({"_id": i, "text": t}) + "\n")
    with (folder / "qrels" / "test.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, docs in data.qrels.items():
            f.writelines(f"{q}\t{d}\t{r}\n" for d, r in docs.items())
    return folder


def test_eval_retrieval_with_reranker_and_dims(
    tiny_embedder_dir, tiny_reranker_dir, scifact_dir, tmp_path, capsys
):
    data_dir = write_beir(load_beir(scifact_dir, "test").subset(3, extra_docs=12), tmp_path / "scifact")
    out = tmp_path / "report.json"
    args = [
        "eval",
        "retrieval",
        "--model",
        str(tiny_embedder_dir),
        "--data",
        str(data_dir),
        "--task",
        "SciFact",
        "--reranker",
        str(tiny_reranker_dir),
        "--rerank-top",
        "5",
        "--dims",
        "32,64",
        "--max-length",
        "128",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--output",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["rerank"]["name"] == "rerank@5" and report["first_stage"]["name"] == "embedding"
    assert [d["dim"] for d in report["dims"]] == [32, 64]
    assert report["instructions"]["source"] == "official" and report["instructions"]["task"] == "SciFact"
    assert report["cache"]["corpus_hit"] is False
    assert (tmp_path / "report.dims.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rerank@5" in capsys.readouterr().out
    # a second run reads the corpus from the cache and gives the same figures
    assert main(args) == 0
    again = json.loads(out.read_text())
    assert again["cache"]["corpus_hit"] is True
    assert again["first_stage"]["metrics"] == report["first_stage"]["metrics"]


def test_eval_sts_and_bitext(tiny_embedder_dir, stsb_dir, shared_data_dir, tmp_path):
    rows = (stsb_dir / "stsb-en-test.csv").read_text(encoding="utf-8").splitlines()[:30]
    (tmp_path / "sts.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "sts.json"
    common = ["--model", str(tiny_embedder_dir), "--no-cache", "--quiet"]
    assert (
        main(
            ["eval", "sts", "--data", str(tmp_path / "sts.csv"), "--output", str(out), "--dim", "32", *common]
        )
        == 0
    )
    sts = json.loads(out.read_text())
    assert sts["n_pairs"] == 30 and sts["dim"] == 32 and "environment" in sts
    assert sts["prompt"] == "Instruct: Retrieve semantically similar text\nQuery:"

    tat = shared_data_dir / "tatoeba" / "data" / "tatoeba" / "v1"
    for side in ("deu", "eng"):
        lines = (tat / f"tatoeba.deu-eng.{side}").read_text(encoding="utf-8").splitlines()[:20]
        (tmp_path / side).write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "bitext.json"
    args = [
        "eval",
        "bitext",
        "--source",
        str(tmp_path / "deu"),
        "--target",
        str(tmp_path / "eng"),
        "--output",
        str(out),
    ]
    assert main([*args, *common]) == 0
    bt = json.loads(out.read_text())
    assert bt["n_pairs"] == 20 and bt["prompt"] == "Instruct: Retrieve parallel sentences\nQuery:"


def test_eval_errors_name_the_bad_value(tiny_embedder_dir, scifact_dir, tmp_path, capsys):
    common = ["--model", str(tiny_embedder_dir), "--no-cache", "--quiet"]
    assert main(["eval", "retrieval", "--data", str(scifact_dir), "--split", "dev", *common]) == 2
    assert "split 'dev'" in capsys.readouterr().err
    assert main(["eval", "retrieval", "--data", str(scifact_dir), "--dims", "32,abc", *common]) == 2
    assert "bad dimension 'abc'" in capsys.readouterr().err
