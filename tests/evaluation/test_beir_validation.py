"""BEIR folders with bad data: clear errors naming file and line, warnings with counts."""

from __future__ import annotations

import json
import warnings

import pytest

from embedforge.corpus import CorpusWarning
from embedforge.evaluation.data import load_beir

DOCS = [{"_id": "d1", "title": "", "text": "one"}, {"_id": "d2", "title": "T", "text": "two"}]
QUERIES = [{"_id": "q1", "text": "Q1"}, {"_id": "q2", "text": "Q2"}]
QRELS = "q1\td1\t1\nq2\td2\t1\n"


def beir(tmp_path, corpus=DOCS, queries=QUERIES, qrels=QRELS, raw_corpus=None):
    (tmp_path / "qrels").mkdir(exist_ok=True)
    (tmp_path / "corpus.jsonl").write_text(
        raw_corpus if raw_corpus is not None else "".join(json.dumps(r) + "\n" for r in corpus),
        encoding="utf-8",
    )
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels, encoding="utf-8")
    return tmp_path


def test_valid_folder_loads_without_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_beir(beir(tmp_path))
    assert data.corpus_ids == ["d1", "d2"] and data.corpus_texts == ["one", "T two"]
    assert data.query_ids == ["q1", "q2"] and data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}


def test_qrels_pointing_at_missing_documents_warn_with_counts(tmp_path):
    d = beir(tmp_path, qrels="q1\td1\t1\nq1\tgone\t1\nq2\tlost\t2\nq2\tvanished\t1\n")
    with pytest.warns(CorpusWarning) as record:
        data = load_beir(d)
    [w] = record
    message = str(w.message)
    assert "test.tsv: 3 judgements of 2 queries point at documents missing from the corpus" in message
    assert "1 queries have no relevant document in the corpus at all" in message  # q2
    assert data.qrels["q2"] == {"lost": 2, "vanished": 1}  # kept: they count, as in BEIR


def test_duplicate_corpus_ids_are_refused_naming_both_lines(tmp_path):
    d = beir(tmp_path, corpus=[*DOCS, {"_id": "d1", "title": "", "text": "again"}])
    with pytest.raises(
        ValueError, match=r"corpus.jsonl:3: duplicate document id 'd1' \(first at .*corpus.jsonl:1\)"
    ):
        load_beir(d)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"title": "", "text": "no id"}, r"corpus.jsonl:3: no id field '_id'"),
        ({"_id": "d3", "title": "only a title"}, r"corpus.jsonl:3: no text field 'text'"),
        ({"_id": "d3", "text": ["not", "a", "string"]}, r"corpus.jsonl:3: field 'text' is list"),
        (
            {"_id": "d3", "text": "lone \ud800 surrogate"},
            r"corpus.jsonl:3: field 'text' is not valid Unicode",
        ),
    ],
)
def test_bad_corpus_rows_name_file_and_line(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        load_beir(beir(tmp_path, corpus=[*DOCS, row]))


def test_bad_query_rows_name_file_and_line(tmp_path):
    with pytest.raises(ValueError, match=r"queries.jsonl:2: field 'text' is NoneType"):
        load_beir(beir(tmp_path, queries=[QUERIES[0], {"_id": "q2", "text": None}]))
    with pytest.raises(ValueError, match=r"queries.jsonl:1: no id field '_id'"):
        load_beir(beir(tmp_path, queries=[{"text": "Q"}]))


def test_empty_corpus_queries_or_qrels_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"corpus.jsonl holds no documents"):
        load_beir(beir(tmp_path, raw_corpus="\n"))
    with pytest.raises(ValueError, match=r"queries.jsonl holds no queries"):
        load_beir(beir(tmp_path, queries=[]))
    with pytest.raises(ValueError, match=r"test.tsv holds no judgements"):
        load_beir(beir(tmp_path, qrels=""))
