"""The corpus cut into parts (no Ray needed): parts read alone give exactly the corpus reader's documents."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedforge.corpus import read_documents
from embedforge.scaleout.parts import (
    merge_parts,
    open_manifest,
    parts_dir_of,
    plan_parts,
    read_part,
    write_block,
)

ROWS = [
    {"_id": "d1", "title": "A title", "text": "first text"},
    {"_id": 2, "text": "  second, integer id  "},
    {"_id": "d3", "title": None, "text": "third", "source": "x"},
    {"_id": "d4", "title": "ünïcode", "text": "fourth \u2028 with a line separator"},
    {"_id": "d5", "text": "fifth\fwith a form feed"},
    {"_id": "d6", "title": "", "text": "sixth"},
    {"_id": "d7", "text": "seventh"},
]


def _all(path, size, **kw):
    parts = plan_parts(path, size)
    return parts, [d for p in parts for d in read_part(path, p, **kw)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_jsonl_parts_read_like_the_corpus_reader(tmp_path, size):
    p = tmp_path / "c.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in ROWS]
    # a BOM, blank lines (also ones made of spaces and a CRLF ending) between and after records
    body = "\ufeff" + lines[0] + "\n\n" + lines[1] + "\r\n   \n" + "\n".join(lines[2:]) + "\n\n \n"
    p.write_text(body, encoding="utf-8")
    parts, docs = _all(p, size)
    assert docs == read_documents(p)
    assert [x.rows for x in parts] == [min(size, 7 - i) for i in range(0, 7, size)]
    assert [x.first_row for x in parts] == list(range(0, 7, size))


def test_txt_parts_keep_blank_lines_and_row_ids(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes("one\r\n\ntwo \u2028 still two\nthree\fthree\nlast".encode())
    _, docs = _all(p, 2)
    assert docs == read_documents(p)
    assert [d.id for d in docs] == ["0", "1", "2", "3", "4"]


def test_jsonl_without_ids_gets_row_numbers_across_parts(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" + "\n" * (i % 2) for i in range(9)))
    _, docs = _all(p, 4)
    assert docs == read_documents(p)
    assert [d.id for d in docs] == [str(i) for i in range(9)]


def test_parquet_parts_are_whole_row_groups(tmp_path):
    p = tmp_path / "c.parquet"
    rows = [{"id": f"p{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), p, row_group_size=3)
    parts, docs = _all(p, 5)
    assert docs == read_documents(p)
    assert [x.row_groups for x in parts] == [(0, 1), (2, 3)]
    assert [x.rows for x in parts] == [6, 4]


def test_errors_name_the_file_and_line_of_the_part(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "ok"}\n{"_id": "c", "txt": "no text"}\n')
    parts = plan_parts(p, 2)
    with pytest.raises(ValueError, match=r"c\.jsonl:3: no text field"):
        read_part(p, parts[1])
    p.write_text('{"_id": "a", "text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: not valid JSON"):
        read_part(p, plan_parts(p, 5)[0])


def test_csv_is_refused_with_the_formats_allowed(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("id,text\n1,a\n")
    with pytest.raises(ValueError, match=r"--engine ray reads .*\.jsonl.*\.parquet.*--engine local"):
        plan_parts(p, 10)


def test_manifest_refuses_other_settings_and_merge_keeps_corpus_order(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"x{i}", "text": str(i)}) + "\n" for i in range(5)))
    parts = plan_parts(corpus, 2)
    out = tmp_path / "out.parquet"
    folder = parts_dir_of(out)
    manifest = open_manifest(folder, {"model": "m"}, len(parts))
    vecs = np.arange(10, dtype=np.float32).reshape(5, 2)
    for part in reversed(parts):  # committed out of order
        docs = read_part(corpus, part)
        name = write_block(
            folder, part.index, part.first_row, [d.id for d in docs], vecs[part.first_row :][: part.rows]
        )
        manifest.commit(folder, part.index, [name])
    with pytest.raises(ValueError, match=r"other settings or input \{'model': \('m', 'other'\)\}"):
        open_manifest(folder, {"model": "other"}, len(parts))
    again = open_manifest(folder, {"model": "m"}, len(parts))
    assert all(again.is_done(p.index) for p in parts)
    merge_parts(folder, again, parts, out, corpus=corpus, with_ids=True)
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [f"x{i}" for i in range(5)]
    np.testing.assert_array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), vecs)


def _committed(corpus, out):
    """Every part of ``corpus`` (2 rows each) written and committed with 2-d vectors, as a job would."""
    parts = plan_parts(corpus, 2)
    folder = parts_dir_of(out)
    manifest = open_manifest(folder, {}, len(parts))
    for part in parts:
        docs = read_part(corpus, part)
        name = write_block(folder, part.index, part.first_row, [d.id for d in docs], np.ones((len(docs), 2)))
        manifest.commit(folder, part.index, [name])
    return parts, folder, manifest


def test_merge_reports_a_duplicate_id_with_the_readers_message(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i % 3, "text": str(i)}) + "\n" for i in range(4)))
    out = tmp_path / "out.npy"
    parts, folder, manifest = _committed(corpus, out)
    with pytest.raises(ValueError, match=r"c\.jsonl:4: duplicate document id '0' \(first at .*c\.jsonl:1\)"):
        merge_parts(folder, manifest, parts, out, corpus=corpus, with_ids=True)
    assert not out.exists()


def test_merge_passes_ids_that_only_share_a_hash(tmp_path, monkeypatch):
    from embedforge.scaleout import parts as parts_module

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": str(i)}) + "\n" for i in range(5)))
    out = tmp_path / "out.parquet"
    parts, folder, manifest = _committed(corpus, out)
    # every id hashes alike: the reader, reading the ids themselves, finds no repeat
    monkeypatch.setattr(parts_module, "id_hashes", lambda ids: np.zeros(len(ids), np.uint64))
    result = merge_parts(folder, manifest, parts, out, corpus=corpus, with_ids=True)
    assert result.rows == 5 and pq.read_table(out).column("id").to_pylist() == [f"d{i}" for i in range(5)]
