"""The ``index`` and ``search`` commands, TREC runs, and evaluating an index like ``eval retrieval``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from index_testdata import make_docs, write_jsonl

from embedforge.evaluation.data import load_beir
from embedforge.evaluation.metrics import DEFAULT_METRICS, retrieval_scores
from embedforge.evaluation.retrieval import evaluate_retrieval
from embedforge.index import Index, evaluate_index, read_trec_run
from embedforge.index.cli import main


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory) -> Path:
    """A small BEIR directory: 150 documents, 12 queries, graded judgements."""
    d = tmp_path_factory.mktemp("beir") / "tinyset"
    (d / "qrels").mkdir(parents=True)
    docs = make_docs(150, seed=7)
    write_jsonl(d / "corpus.jsonl", docs)
    rng = random.Random(1)
    queries = [
        {"_id": f"q{i}", "text": " ".join(rng.choices(docs[i]["text"].split(), k=3))} for i in range(12)
    ]
    write_jsonl(d / "queries.jsonl", queries)
    lines = ["query-id\tcorpus-id\tscore"]
    for i in range(12):
        lines += [f"q{i}\td{i}\t2"] + [f"q{i}\td{rng.randrange(150)}\t1" for _ in range(2)]
    (d / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return d


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory, beir_dir, tiny_embedder_dir) -> Path:
    out = tmp_path_factory.mktemp("cli") / "ix"
    argv = ["index", "build", str(beir_dir / "corpus.jsonl"), "--index", str(out)]
    assert main([*argv, "--model", str(tiny_embedder_dir), "--max-length", "64", "--no-progress"]) == 0
    return out


def test_build_prints_a_json_summary(tmp_path, beir_dir, tiny_embedder_dir, capsys):
    out = tmp_path / "ix"
    argv = ["index", "build", str(beir_dir / "corpus.jsonl"), "--index", str(out), "--batch-size", "40"]
    assert main([*argv, "--model", str(tiny_embedder_dir), "--max-length", "64", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["build"]["embedded"] == summary["build"]["rows"] == 150
    assert summary["info"]["rows"] == 150 and summary["info"]["fragments"] == 4  # one per batch
    assert summary["info"]["metadata_columns"] == ["year", "topic"]


def test_search_one_query_json_and_text(cli_index, capsys):
    assert main(["search", str(cli_index), "gene protein", "-k", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert {"id", "score", "text", "title", "metadata", "rerank_score"} <= set(rows[0])
    assert main(["search", str(cli_index), "gene protein", "-k", "2", "--where", "year >= 2012"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_search_with_rerank_from_the_command_line(cli_index, tiny_reranker_dir, capsys):
    argv = ["search", str(cli_index), "gene", "-k", "3", "--json", "--rerank", str(tiny_reranker_dir)]
    assert main([*argv, "--rerank-top", "5", "--reranker-max-length", "128"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    scores = [r["rerank_score"] for r in rows]
    assert len(rows) == 3 and scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)


def test_queries_file_gives_a_trec_run_that_scores_like_eval_retrieval(
    cli_index, beir_dir, tiny_embedder, tmp_path, capsys
):
    run_path = tmp_path / "run.tsv"
    argv = ["search", str(cli_index), "--queries", str(beir_dir / "queries.jsonl"), "-k", "100"]
    assert main([*argv, "--output", str(run_path), "--tag", "tiny"]) == 0
    lines = run_path.read_text().splitlines()
    assert len(lines) == 12 * 100
    qid, q0, _, rank, _, tag = lines[0].split()
    assert (qid, q0, rank, tag) == ("q0", "Q0", "1", "tiny")

    data = load_beir(beir_dir)
    reference = evaluate_retrieval(tiny_embedder, data, top_k=100, show_progress=False)
    from_run = retrieval_scores(data.qrels, read_trec_run(run_path), DEFAULT_METRICS).mean
    assert from_run == pytest.approx(reference.first_stage.metrics, abs=1e-12)
    capsys.readouterr()
    assert main([*argv, "--output", str(run_path), "--qrels", str(beir_dir / "qrels" / "test.tsv")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ndcg@10"] == round(100 * reference.first_stage.metrics["ndcg@10"], 2)
    assert printed["queries_judged"] == 12
    report = evaluate_index(cli_index, beir_dir, k_values=(1, 3, 5, 10, 100))
    for name, value in reference.first_stage.metrics.items():
        assert report["metrics"][name] == pytest.approx(value, abs=1e-12), name
    assert report["judged_documents_missing"] == 0 and report["n_queries"] == 12


def test_info_optimize_delete_add(tmp_path, cli_index, beir_dir, capsys):
    import shutil

    ix = tmp_path / "ix"
    shutil.copytree(cli_index, ix)
    assert main(["index", "info", str(ix), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["rows"], info["dim"], info["quantization"], info["ann"]) == (150, 64, None, None)
    assert info["size_bytes"] > 150 * 64 * 4
    assert main(["index", "optimize", str(ix), "--quantize", "binary"]) == 0
    assert json.loads(capsys.readouterr().out)["quantization"] == "binary"
    (tmp_path / "ids.txt").write_text("d1\nd2\n\nnot-there\n")
    assert main(["index", "delete", str(ix), "--ids", str(tmp_path / "ids.txt")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["deleted"], out["missing"], out["rows"]) == (2, ["not-there"], 148)
    write_jsonl(tmp_path / "more.jsonl", make_docs(3, seed=9, prefix="new"))
    assert main(["index", "add", str(ix), str(tmp_path / "more.jsonl"), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 151
    assert Index.open(ix).manifest.quantization == "binary"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "{ix}", "gene", "--where", "year >>> 2"], "is not a valid filter"),
        (["search", "{missing}", "gene"], "does not exist"),
        (["search", "{ix}"], "give either a query text or --queries"),
        (["index", "info", "{missing}"], "does not exist"),
        (["index", "delete", "{ix}", "--ids", "{missing}"], "ids file"),
        (["search", "{ix}", "gene", "--qrels", "{missing}"], "use it with --queries"),
    ],
)
def test_errors_are_one_clear_line(cli_index, tmp_path, capsys, argv, message):
    argv = [a.format(ix=cli_index, missing=tmp_path / "missing") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_retrieval_with_index_reports_what_eval_retrieval_does(
    cli_index, beir_dir, tiny_embedder, tmp_path
):
    from embedforge.cli import main as embedforge_main

    out = tmp_path / "report.json"
    argv = ["eval", "retrieval", "--index", str(cli_index), "--data", str(beir_dir), "--output", str(out)]
    assert embedforge_main(argv) == 0
    report = json.loads(out.read_text())
    reference = evaluate_retrieval(tiny_embedder, load_beir(beir_dir), top_k=100, show_progress=False)
    for name, value in reference.first_stage.metrics.items():
        assert report["metrics"][name] == pytest.approx(value, abs=1e-12), name
    assert report["n_index_rows"] == 150 and report["judged_documents_missing"] == 0


def test_eval_retrieval_needs_a_model_or_an_index_and_not_both(
    cli_index, beir_dir, tiny_embedder_dir, capsys
):
    from embedforge.cli import main as embedforge_main

    assert embedforge_main(["eval", "retrieval", "--data", str(beir_dir)]) == 2
    assert "give --model MODEL (or --index DIR" in capsys.readouterr().err
    argv = [
        "eval",
        "retrieval",
        "--index",
        str(cli_index),
        "--data",
        str(beir_dir),
        "--model",
        str(tiny_embedder_dir),
    ]
    assert embedforge_main(argv) == 2
    assert "--model cannot be combined with --index" in capsys.readouterr().err
