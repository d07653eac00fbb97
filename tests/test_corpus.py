"""The one corpus reader: formats, the id/title/text rules, streaming, and errors naming file and line."""

from __future__ import annotations

import json
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedforge.corpus import CorpusWarning, Document, document_text, iter_documents, read_documents
from embedforge.fileio import atomic_write, read_jsonl, write_jsonl
from embedforge.textio import read_texts


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_beir_rows_keep_ids_titles_and_metadata(tmp_path):
    p = jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Title", "text": " Body. ", "year": 2020},
            {"_id": "d2", "title": "", "text": " untitled "},
            {"_id": 7, "title": None, "text": "int id"},
        ],
    )
    docs = read_documents(p)
    assert docs == [
        Document("d1", " Body. ", "Title", {"year": 2020}),
        Document("d2", " untitled ", "", {}),
        Document("7", "int id", "", {}),
    ]
    # the one join rule, MTEB's: (title + " " + text).strip(), else text.strip()
    assert [d.full_text for d in docs] == ["Title  Body.", "untitled", "int id"]
    assert document_text("T", "body ") == "T body" and document_text(None, " b ") == "b"


def test_jsonl_without_ids_gets_row_numbers_and_a_named_field(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"question": "a?", "lang": "en"}\n\n{"question": "b?"}\n', encoding="utf-8")
    docs = read_documents(p, field="question")
    assert [(d.id, d.text, dict(d.metadata)) for d in docs] == [("0", "a?", {"lang": "en"}), ("1", "b?", {})]
    assert read_texts(p, "question") == (["a?", "b?"], None)  # no id field in the file: no ids


def test_txt_splits_on_newlines_only(tmp_path):
    p = tmp_path / "lines.txt"
    # form feed, U+2028, U+0085 and a lone \r stay inside their line; \r\n ends one
    p.write_bytes("one\fstill one\r\ntwo\u2028still two\nthree\x85x\rthree\nfour\n".encode())
    docs = read_documents(p)
    assert [d.id for d in docs] == ["0", "1", "2", "3"]
    assert [d.text for d in docs] == ["one\fstill one", "two\u2028still two", "three\x85x\rthree", "four"]
    texts, ids = read_texts(p)
    assert len(texts) == 4 and ids is None
    # an empty line is a row of its own: row counts always equal line counts
    (tmp_path / "gap.txt").write_text("a\n\nb", encoding="utf-8")
    assert [d.text for d in read_documents(tmp_path / "gap.txt")] == ["a", "", "b"]


def test_parquet_streams_by_record_batch(tmp_path):
    p = tmp_path / "c.parquet"
    n = 25
    pq.write_table(
        pa.table(
            {"id": [f"p{i}" for i in range(n)], "text": [f"t{i}" for i in range(n)], "n": list(range(n))}
        ),
        p,
        row_group_size=4,
    )
    docs = list(iter_documents(p))
    assert [d.id for d in docs] == [f"p{i}" for i in range(n)]
    assert docs[24].metadata == {"n": 24} and docs[3].text == "t3"
    pq.write_table(pa.table({"text": ["x", None]}), tmp_path / "null.parquet")
    with pytest.raises(ValueError, match=r"null.parquet: row 2: field 'text' is NoneType"):
        read_documents(tmp_path / "null.parquet")


def test_csv_with_header_quotes_and_bad_rows(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text('id,title,text,tag\n1,T,"multi\nline, with comma",a\n2,,plain,b\n', encoding="utf-8")
    docs = read_documents(p)
    assert [(d.id, d.full_text, dict(d.metadata)) for d in docs] == [
        ("1", "T multi\nline, with comma", {"tag": "a"}),
        ("2", "plain", {"tag": "b"}),
    ]
    (tmp_path / "short.csv").write_text("id,text\n1,a\n2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"short.csv:3: 1 columns where the header has 2"):
        read_documents(tmp_path / "short.csv")
    (tmp_path / "notext.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"notext.csv:1: .*no text column"):
        read_documents(tmp_path / "notext.csv")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": \n', r"bad.jsonl:2: not valid JSON"),
        (b'{"_id": "a", "text": "ok"}\n\n{"_id": "b", "abstract": "x"}\n', r"bad.jsonl:3: no text field"),
        (b'{"_id": "a", "text": 5}\n', r"bad.jsonl:1: field 'text' is int"),
        (b'{"_id": "a", "text": "a\\ud800b"}\n', r"bad.jsonl:1: field 'text' is not valid Unicode.*U\+D800"),
        (b'{"_id": "a", "text": "caf\xe9"}\n', r"bad.jsonl:1: not valid UTF-8"),
        (b'{"_id": ["x"], "text": "t"}\n', r"bad.jsonl:1: id field '_id' is list"),
        (b'["not", "an", "object"]\n', r"bad.jsonl:1: expected a JSON object"),
        (b'{"_id": "a", "title": 3, "text": "t"}\n', r"bad.jsonl:1: field 'title' is int"),
    ],
)
def test_errors_name_file_and_line(tmp_path, content, message):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_documents(p)


def test_bad_paths_and_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_documents(tmp_path / "missing.jsonl")
    (tmp_path / "x.xlsx").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unsupported input .*use one of .jsonl"):
        read_documents(tmp_path / "x.xlsx")
    p = jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "t"}])
    with pytest.raises(ValueError, match=r"c.jsonl:1: no id field '_id'"):
        read_documents(p, id_field="_id")
    with pytest.raises(ValueError, match="on_duplicate must be 'error' or 'last'"):
        read_documents(p, on_duplicate="first")  # type: ignore[arg-type]


def test_reading_streams(tmp_path):
    """Documents come out before a bad line further down is even read."""
    p = tmp_path / "s.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b"}\n{oops\n', encoding="utf-8")
    it = iter_documents(p)
    assert next(it).text == "a" and next(it).text == "b"
    with pytest.raises(ValueError, match="s.jsonl:3"):
        next(it)


def test_duplicate_ids_error_or_keep_last(tmp_path):
    p = jsonl(
        tmp_path / "dup.jsonl",
        [
            {"_id": "a", "text": "1"},
            {"_id": "b", "text": "2"},
            {"_id": "a", "text": "3"},
            {"_id": "b", "text": "4"},
        ],
    )
    with pytest.raises(
        ValueError, match=r"dup.jsonl:3: duplicate document id 'a' \(first at .*dup.jsonl:1\)"
    ):
        read_documents(p)
    with pytest.warns(
        CorpusWarning, match=r"2 duplicate document ids; kept the last .*'a' \(.*:1 and .*:3\)"
    ):
        docs = read_documents(p, on_duplicate="last")
    assert [(d.id, d.text) for d in docs] == [("a", "3"), ("b", "4")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicates: no warning
        read_documents(jsonl(tmp_path / "ok.jsonl", [{"_id": "a", "text": "1"}]), on_duplicate="last")


def test_read_texts_uses_the_one_join_rule(tmp_path):
    p = jsonl(
        tmp_path / "corpus.jsonl",
        [{"_id": "d0", "title": "T", "text": "body "}, {"_id": "d1", "title": "", "text": " bare "}],
    )
    assert read_texts(p) == (["T body", "bare"], ["d0", "d1"])


def test_jsonl_helpers_and_atomic_write(tmp_path):
    out = tmp_path / "sub" / "rows.jsonl"
    assert write_jsonl(out, [{"a": "é"}, {"b": [1, 2]}]) == 2
    assert read_jsonl(out) == [{"a": "é"}, {"b": [1, 2]}]
    assert "é" in out.read_text(encoding="utf-8")  # unescaped UTF-8
    with pytest.raises(RuntimeError, match="boom"), atomic_write(out) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert read_jsonl(out) == [{"a": "é"}, {"b": [1, 2]}]  # the old file is intact
    assert sorted(p.name for p in out.parent.iterdir()) == ["rows.jsonl"]  # no temporary left
