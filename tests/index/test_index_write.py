"""Writing an index: upsert, delete, bad input, and a build killed with SIGKILL then resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from index_testdata import make_docs, write_jsonl

from embedforge.corpus import CorpusWarning
from embedforge.index import DuplicateIdWarning, Index, IndexStateError


@pytest.fixture
def index(tmp_path, built, tiny_embedder) -> Index:
    shutil.copytree(built, tmp_path / "ix")
    return Index.open(tmp_path / "ix", tiny_embedder)


def test_add_replaces_an_existing_id_and_skips_unchanged_ones(index, docs, tiny_embedder):
    n = len(index)
    changed = {**docs[5], "text": "zebra zebra zebra", "year": 1999}
    new = {
        "_id": "new1",
        "title": "",
        "text": "a brand new document about zebras",
        "year": 2020,
        "topic": "bio",
    }
    report = index.add([docs[0], changed, new], show_progress=False)
    assert (report.embedded, report.unchanged, report.replaced, report.rows) == (2, 1, 1, n + 1)
    assert len(index) == n + 1
    vec = index.vectors()
    assert vec.ids.count("d5") == 1
    row = vec.ids.index("d5")
    want = tiny_embedder.encode_documents((changed["title"] + " " + changed["text"]).strip())
    np.testing.assert_allclose(vec.matrix[row], want, atol=1e-5)
    hit = {h.id: h for h in index.search("zebra", k=len(index))}["d5"]
    assert (hit.text, hit.metadata["year"]) == ("zebra zebra zebra", 1999)
    again = index.add([changed, new], show_progress=False)
    assert (again.embedded, again.unchanged) == (0, 2)


def test_add_with_a_new_field_is_refused(index):
    with pytest.raises(ValueError, match=r"fields \['colour'\] are not columns"):
        index.add([{"_id": "x", "text": "t", "colour": "red"}], show_progress=False)


def test_delete_removes_documents_from_results(index):
    top = [h.id for h in index.search("protein cell", k=3)]
    out = index.delete([top[0], "no-such-id"])
    assert out["deleted"] == 1 and out["missing"] == ["no-such-id"]
    after = index.search("protein cell", k=len(index))
    assert top[0] not in {h.id for h in after}
    assert [h.id for h in after[:2]] == top[1:]
    reopened = Index.open(index.dir)
    assert top[0] not in reopened.vectors().ids
    with pytest.raises(TypeError, match="sequence of str"):
        index.delete("d1")


def test_duplicate_ids_keep_the_last_record_with_a_warning(tmp_path, tiny_embedder):
    rows = [{"_id": "a", "text": "first"}, {"_id": "b", "text": "bee"}, {"_id": "a", "text": "second"}]
    with pytest.warns(DuplicateIdWarning, match="'a'"):
        index = Index.build(rows, tmp_path / "ix", tiny_embedder, show_progress=False)
    assert index.vectors().ids == ["b", "a"]  # the last record, at its own position
    assert index.search("x", k=2, where="id = 'a'")[0].text == "second"
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.warns(CorpusWarning, match="duplicate"):
        index = Index.build(path, tmp_path / "ix2", tiny_embedder, show_progress=False)
    assert index.vectors().ids == ["b", "a"]


def test_bad_directories_and_corpora(tmp_path, corpus_file, built, tiny_embedder):
    with pytest.raises(IndexStateError, match="does not exist"):
        Index.open(tmp_path / "nowhere")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(IndexStateError, match="not an embedforge index"):
        Index.open(foreign)
    with pytest.raises(IndexStateError, match="not empty and not an embedforge index"):
        Index.build(corpus_file, foreign, tiny_embedder, show_progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(IndexStateError, match="already holds an index"):
        Index.build(corpus_file, built, tiny_embedder, show_progress=False)
    with pytest.raises(ValueError, match="holds no documents"):
        Index.build(
            write_jsonl(tmp_path / "empty.jsonl", []), tmp_path / "e", tiny_embedder, show_progress=False
        )
    assert not (tmp_path / "e").exists()
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        Index.build(tmp_path / "missing.jsonl", tmp_path / "m", tiny_embedder, show_progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(IndexStateError, match="manifest.json:1: not valid JSON"):
        Index.open(tmp_path / "bad")
    with pytest.raises(ValueError, match="clash with the index's own columns"):
        Index.build(
            [{"_id": "1", "text": "t", "vector": 3}], tmp_path / "v", tiny_embedder, show_progress=False
        )


def test_overwrite_replaces_an_index(tmp_path, built, tiny_embedder):
    shutil.copytree(built, tmp_path / "ix")
    index = Index.build(
        [{"_id": "only", "text": "one"}], tmp_path / "ix", tiny_embedder, overwrite=True, show_progress=False
    )
    assert index.vectors().ids == ["only"]


# ---------------------------------------------------------------- resumable build

BUILD_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from embedforge import Embedder
from embedforge.index import Index
emb = Embedder.from_pretrained(sys.argv[1], max_length=64)
Index.build(sys.argv[2], sys.argv[3], emb, batch_size=8, show_progress=False,
            on_commit=lambda n: print(n, flush=True))
print("done", flush=True)
"""


def _build_cmd(model: Path, corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", BUILD_SCRIPT, str(model), str(corpus), str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _committed_rows(path: Path) -> int:
    import lancedb

    return lancedb.connect(str(path / "lance")).open_table("documents").count_rows()


@pytest.mark.slow
def test_build_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path, tiny_embedder_dir):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", make_docs(400, seed=3))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(
        _build_cmd(tiny_embedder_dir, corpus, killed), stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert proc.stdout is not None
    commits = 0
    for line in proc.stdout:
        commits += line.strip().isdigit()
        if commits == 3:  # three batches committed: kill it without warning, mid-build
            os.kill(proc.pid, signal.SIGKILL)
            break
    assert proc.wait() == -signal.SIGKILL
    partial = _committed_rows(killed)
    assert 24 <= partial < 400
    assert (killed / "build.json").exists() and not (killed / "manifest.json").exists()
    with pytest.raises(IndexStateError, match="unfinished build"):
        Index.open(killed)

    resumed = subprocess.run(
        _build_cmd(tiny_embedder_dir, corpus, killed), capture_output=True, text=True, env=_env(), check=True
    )
    first_commit = int(resumed.stdout.split()[0])
    assert first_commit > partial  # the committed batches were skipped, not embedded again
    subprocess.run(_build_cmd(tiny_embedder_dir, corpus, clean), capture_output=True, env=_env(), check=True)

    a, b = Index.open(killed).vectors(), Index.open(clean).vectors()
    assert a.ids == b.ids == [f"d{i}" for i in range(400)]  # every document exactly once, in order
    np.testing.assert_array_equal(a.matrix, b.matrix)  # same batches, same model, same threads
    assert not (killed / "build.json").exists()
    assert json.loads((killed / "manifest.json").read_text())["fingerprint"]


def test_resuming_with_another_model_is_refused(
    tmp_path, corpus_file, tiny_embedder, tiny_embedder_plain_dir
):
    from embedforge import Embedder

    out = tmp_path / "ix"

    def stop(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Index.build(corpus_file, out, tiny_embedder, batch_size=64, show_progress=False, on_commit=stop)
    other = Embedder.from_pretrained(tiny_embedder_plain_dir, max_length=64)
    with pytest.raises(IndexStateError, match="unfinished build with other settings"):
        Index.build(corpus_file, out, other, batch_size=64, show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = Index.build(corpus_file, out, tiny_embedder, batch_size=64, show_progress=False)
    assert index.last_write is not None
    assert (index.last_write.unchanged, index.last_write.embedded) == (64, len(index) - 64)


def test_quantised_codes_follow_writes(index):
    index.search("gene", mode="binary")
    index.add(
        [{"_id": "zz", "title": "", "text": "zebra", "year": 2020, "topic": "bio"}], show_progress=False
    )
    index.delete(["d3"])
    ids = {h.id for h in index.search("zebra", k=len(index), mode="binary", rescore_multiplier=1)}
    assert "zz" in ids and "d3" not in ids and len(ids) == len(index)


def test_build_progress_advances_per_model_batch_not_per_commit(tmp_path, tiny_embedder_dir, monkeypatch):
    import embedforge.index.index as index_module
    from embedforge import Embedder

    updates: list[int] = []

    class RecordingBar:
        def __init__(self, *args, total=None, **kwargs):
            self.total = total

        def update(self, n=1):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(index_module, "tqdm", RecordingBar)
    small_batches = Embedder.from_pretrained(tiny_embedder_dir, batch_tokens=64)  # several per commit
    Index.build(make_docs(40, seed=3), tmp_path / "ix", small_batches, show_progress=True)
    assert sum(updates) == 40  # every document counted once
    assert len([n for n in updates if n > 0]) > 1 and max(updates) < 40  # moved per model batch
