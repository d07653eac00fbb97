"""Loading BEIR folders, STS CSVs and bitext files, on real data and on small files with errors."""

from __future__ import annotations

import json

import pytest

from embedforge.evaluation.data import document_text, load_beir, load_bitext, load_sts_csv, read_qrels

pytestmark = pytest.mark.shared_data


def test_scifact_test_split(scifact_dir):
    data = load_beir(scifact_dir, "test")
    assert len(data.corpus_ids) == 5183
    assert len(data.query_ids) == 300
    assert sum(len(v) for v in data.qrels.values()) == 339
    # documents are "title text" (MTEB's convention)
    with (scifact_dir / "corpus.jsonl").open() as f:
        first = json.loads(f.readline())
    assert data.corpus_texts[0] == first["title"] + " " + first["text"]
    assert data.corpus_fingerprint == load_beir(scifact_dir, "test").corpus_fingerprint


def test_subset_keeps_relevant_documents(scifact_dir):
    sub = load_beir(scifact_dir, "test").subset(5, extra_docs=20)
    assert len(sub.query_ids) == 5
    relevant = {d for q in sub.query_ids for d in sub.qrels[q]}
    assert relevant <= set(sub.corpus_ids)
    assert len(sub.corpus_ids) == len(relevant) + 20


def test_sts_and_bitext(stsb_dir, shared_data_dir):
    sts = load_sts_csv(stsb_dir / "stsb-en-test.csv")
    assert len(sts.scores) == 1379 and 0.0 <= min(sts.scores) and max(sts.scores) <= 5.0
    tat = shared_data_dir / "tatoeba" / "data" / "tatoeba" / "v1"
    bt = load_bitext(tat / "tatoeba.deu-eng.deu", tat / "tatoeba.deu-eng.eng")
    assert len(bt.source) == len(bt.target) == 1000


def test_document_text_convention():
    assert document_text("T", "body ") == "T body"
    assert document_text("", " body ") == "body"
    assert document_text(None, "body") == "body"


def _beir(tmp_path, qrels_lines, queries=({"_id": "q1", "text": "Q"},)):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": "D"}) + "\n")
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(qrels_lines))
    return tmp_path


def test_missing_split_names_the_available_ones(tmp_path):
    d = _beir(tmp_path, ["q1\td1\t1\n"])
    with pytest.raises(FileNotFoundError, match=r"split 'dev'.*\['test'\]"):
        load_beir(d, "dev")


def test_bad_qrels_are_refused(tmp_path):
    d = _beir(tmp_path, ["q1\td1\thigh\n"])
    with pytest.raises(ValueError, match="must be an integer, got 'high'"):
        read_qrels(d / "qrels" / "test.tsv")


def test_qrels_with_unknown_query(tmp_path):
    d = _beir(tmp_path, ["q9\td1\t1\n"])
    with pytest.raises(ValueError, match="not in"):
        load_beir(d)


def test_unaligned_bitext_is_refused(tmp_path):
    (tmp_path / "a").write_text("x\ny\n")
    (tmp_path / "b").write_text("x\n")
    with pytest.raises(ValueError, match="not aligned"):
        load_bitext(tmp_path / "a", tmp_path / "b")


def test_sts_csv_with_bad_score(tmp_path):
    (tmp_path / "s.csv").write_text("a,b,1.0\nc,d,many\n")
    with pytest.raises(ValueError, match="score must be a number, got 'many'"):
        load_sts_csv(tmp_path / "s.csv")
