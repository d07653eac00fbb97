"""``embedforge embed`` and ``embedforge rerank`` end to end on files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from embedforge import Embedder, Reranker
from embedforge.cli import main
from texts import DOCUMENTS


def test_embed_txt_to_npy_queries(tiny_embedder_dir, tmp_path):
    src = tmp_path / "q.txt"
    src.write_text("\n".join(["what is gravity", "capital of China"]), encoding="utf-8")
    out = tmp_path / "q.npy"
    assert (
        main(
            [
                "embed",
                str(src),
                "-o",
                str(out),
                "--queries",
                "--instruction",
                "Find facts",
                "--dim",
                "32",
                "--model",
                str(tiny_embedder_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    ref = Embedder.from_pretrained(tiny_embedder_dir).encode_queries(
        ["what is gravity", "capital of China"], instruction="Find facts", dim=32
    )
    np.testing.assert_allclose(np.load(out), ref, atol=1e-6)


def test_embed_beir_jsonl_to_parquet_keeps_ids_and_titles(tiny_embedder_dir, tmp_path):
    src = tmp_path / "corpus.jsonl"
    rows = [{"_id": f"d{i}", "title": "T" if i == 0 else "", "text": t} for i, t in enumerate(DOCUMENTS[:4])]
    src.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    out = tmp_path / "corpus.parquet"
    assert main(["embed", str(src), "-o", str(out), "--model", str(tiny_embedder_dir), "--no-progress"]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["id"] == ["d0", "d1", "d2", "d3"]
    texts = ["T " + DOCUMENTS[0]] + DOCUMENTS[1:4]
    ref = Embedder.from_pretrained(tiny_embedder_dir).encode_documents(texts)
    np.testing.assert_allclose(np.array(table["embedding"], dtype=np.float32), ref, atol=1e-6)


def test_embed_rejects_instruction_for_documents_and_bad_files(tiny_embedder_dir, tmp_path, capsys):
    src = tmp_path / "d.csv"
    src.write_text("a,b\n")
    assert main(["embed", str(src), "-o", str(tmp_path / "x.npy"), "--model", str(tiny_embedder_dir)]) == 2
    assert "unsupported input" in capsys.readouterr().err
    assert (
        main(["embed", str(tmp_path / "missing.txt"), "-o", "x.npy", "--model", str(tiny_embedder_dir)]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_rerank_writes_ranked_jsonl(tiny_reranker_dir, tmp_path):
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCUMENTS[:6]), encoding="utf-8")
    out = tmp_path / "ranked.jsonl"
    assert (
        main(
            [
                "rerank",
                "What is the capital of China?",
                str(docs),
                "-o",
                str(out),
                "--top-k",
                "4",
                "--model",
                str(tiny_reranker_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = Reranker.from_pretrained(tiny_reranker_dir).rank(
        "What is the capital of China?", DOCUMENTS[:6], top_k=4
    )
    assert [r["index"] for r in rows] == [e.index for e in expected]
    np.testing.assert_allclose([r["score"] for r in rows], [e.score for e in expected], atol=1e-6)
