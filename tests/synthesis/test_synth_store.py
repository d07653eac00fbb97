"""The append-only store: keys, failures, and repair of a torn last line."""

from __future__ import annotations

import json

import pytest

from embedforge.synthesis.store import RecordKey, SynthesisStore, failed_path, iter_jsonl, repair_tail


def rec(doc_id: str, sample: int = 0) -> dict:
    prov = {"doc_id": doc_id, "task": "retrieval", "sample": sample, "prompt_version": "v1"}
    return {"instruction": None, "query": f"q {doc_id}", "positive": "p", "negatives": [], "provenance": prov}


def test_records_and_failures_round_trip(tmp_path):
    out = tmp_path / "sub" / "out.jsonl"
    assert failed_path(out) == tmp_path / "sub" / "out.failed.jsonl"
    with SynthesisStore(out) as store:
        store.add_records([rec("a"), rec("a", 1)])
        store.add_failure(RecordKey("b", "retrieval", 0, "v1"), "no valid answer", model="m")
        store.add_failure(RecordKey("a", "retrieval", 2, "v1"), "timeout", model="m")
    with SynthesisStore(out) as store:
        assert store.done_keys == {RecordKey("a", "retrieval", 0, "v1"), RecordKey("a", "retrieval", 1, "v1")}
        assert store.previously_failed() == {
            RecordKey("b", "retrieval", 0, "v1"): "no valid answer",
            RecordKey("a", "retrieval", 2, "v1"): "timeout",
        }
        store.add_records([rec("b")])  # a later success hides the earlier failure
        assert set(store.previously_failed()) == {RecordKey("a", "retrieval", 2, "v1")}
    assert [r["query"] for r in iter_jsonl(out)] == ["q a", "q a", "q b"]


def test_a_torn_last_line_is_cut_on_open(tmp_path):
    out = tmp_path / "out.jsonl"
    good = json.dumps(rec("a")) + "\n" + json.dumps(rec("b")) + "\n"
    out.write_text(good + json.dumps(rec("c"))[:17], encoding="utf-8")
    with SynthesisStore(out) as store:
        assert store.repaired_bytes == 17
        assert {k.doc_id for k in store.done_keys} == {"a", "b"}
        store.add_records([rec("c")])
    assert [r["provenance"]["doc_id"] for r in iter_jsonl(out)] == ["a", "b", "c"]


def test_repair_tail_edge_cases(tmp_path):
    p = tmp_path / "x.jsonl"
    assert repair_tail(p) == 0  # absent
    p.write_bytes(b"")
    assert repair_tail(p) == 0
    p.write_bytes(b'{"torn": ')  # a single torn line: all of it goes
    assert repair_tail(p) == 9 and p.read_bytes() == b""
    p.write_bytes(b"x" * 70000 + b"\n" + b"y" * 70000)  # the newline lies beyond one read block
    assert repair_tail(p) == 70000 and p.read_bytes() == b"x" * 70000 + b"\n"


def test_a_corrupt_middle_line_is_reported_with_its_place(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(rec("a")) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        list(iter_jsonl(p))
