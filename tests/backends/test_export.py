"""``embedforge export`` and loading exports: round trips, the manifest, and the errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from tests.texts import DOCUMENTS, QUERIES

from embedforge import Embedder, Reranker
from embedforge.export import MANIFEST, ExportError, builtin_calibration_texts, export, read_manifest
from embedforge.export_cli import register
from embedforge.runtime.int8 import Int8Runtime


@pytest.fixture(scope="module")
def int8_embedder_dir(tmp_path_factory, tiny_embedder_dir):
    out = tmp_path_factory.mktemp("int8-embedder") / "export"
    export(str(tiny_embedder_dir), "torch-int8", out, calibration_texts=builtin_calibration_texts(24))
    return out


def test_export_round_trip(int8_embedder_dir, tiny_embedder_dir):
    fp32 = Embedder.from_pretrained(tiny_embedder_dir, device="cpu")
    a = Embedder.from_pretrained(int8_embedder_dir, backend="torch-int8")
    b = Embedder.from_pretrained(int8_embedder_dir, backend="torch-int8")
    assert isinstance(a.runtime, Int8Runtime)
    ref, out = fp32.encode(DOCUMENTS), a.encode(DOCUMENTS)
    np.testing.assert_array_equal(out, b.encode(DOCUMENTS))  # loading is deterministic
    cos = (ref * out).sum(1)
    assert cos.min() >= 0.99
    assert a.fingerprint != fp32.fingerprint  # caches never mix int8 and fp32 vectors
    assert a.pooling == fp32.pooling and a.prompts == fp32.prompts and a.max_length == fp32.max_length


def test_manifest_records_backend_version_and_calibration(int8_embedder_dir):
    import embedforge

    manifest = read_manifest(int8_embedder_dir)
    assert manifest is not None
    assert (manifest.backend, manifest.kind, manifest.embedforge_version) == (
        "torch-int8",
        "embedder",
        embedforge.__version__,
    )
    assert manifest.calibration["texts"] == 24 and len(manifest.calibration["sha256"]) == 64
    assert manifest.calibration["source"] == "texts given"
    assert manifest.int8["quantized_linears"] + len(manifest.int8["keep_fp32"]) == 14  # 2 layers x 7
    assert (int8_embedder_dir / "modules.json").is_file() and (int8_embedder_dir / "tokenizer.json").is_file()


def test_export_loaded_as_another_backend_is_refused(int8_embedder_dir):
    with pytest.raises(ExportError, match="exported for backend 'torch-int8', not 'torch'"):
        Embedder.from_pretrained(int8_embedder_dir)


def test_export_of_another_kind_is_refused(int8_embedder_dir):
    with pytest.raises(ExportError, match="exported embedder, not a reranker"):
        Reranker.from_pretrained(int8_embedder_dir, backend="torch-int8")


def test_export_of_another_version_is_refused(int8_embedder_dir, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(int8_embedder_dir, copy)
    data = json.loads((copy / MANIFEST).read_text())
    data["embedforge_version"] = "0.0.9"
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ExportError, match=r"exported by embedforge 0.0.9 .* export it again"):
        Embedder.from_pretrained(copy, backend="torch-int8")


def test_broken_manifest_is_refused(int8_embedder_dir, tmp_path):
    import shutil

    copy = tmp_path / "broken"
    shutil.copytree(int8_embedder_dir, copy)
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(ExportError, match="not a valid embedforge export manifest"):
        Embedder.from_pretrained(copy, backend="torch-int8")


def test_export_refuses_a_non_empty_directory(tiny_embedder_dir, tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export(str(tiny_embedder_dir), "torch-int8", tmp_path)
    assert (tmp_path / "x.txt").read_text() == "keep me"


def test_export_refuses_an_unknown_backend(tiny_embedder_dir, tmp_path):
    with pytest.raises(
        ValueError,
        match=r"cannot export for backend 'int4'; choose one of \['torch-int8', 'onnx', 'onnx-int8'\]",
    ):
        export(str(tiny_embedder_dir), "int4", tmp_path / "o")
    with pytest.raises(ValueError, match="cannot export for backend 'torch'"):  # torch needs no export
        export(str(tiny_embedder_dir), "torch", tmp_path / "o")


def test_unknown_backend_is_refused_at_load(tiny_embedder_dir):
    with pytest.raises(ValueError, match="backend 'int4' is not available"):
        Embedder.from_pretrained(tiny_embedder_dir, backend="int4")


def test_int8_without_export_calibrates_at_load(tiny_embedder_dir):
    fp32 = Embedder.from_pretrained(tiny_embedder_dir, device="cpu")
    emb = Embedder.from_pretrained(tiny_embedder_dir, backend="torch-int8")
    assert emb.runtime.backend == "torch-int8"
    assert emb.runtime.record["calibration"]["source"].startswith("embedforge built-in texts")
    assert ((fp32.encode(QUERIES) * emb.encode(QUERIES)).sum(1)).min() >= 0.99


def test_reranker_export_round_trip(tiny_reranker_dir, tmp_path):
    out = tmp_path / "rr"
    export(
        str(tiny_reranker_dir),
        "torch-int8",
        out,
        kind="reranker",
        calibration_texts=builtin_calibration_texts(16),
    )
    fp32 = Reranker.from_pretrained(tiny_reranker_dir, device="cpu")
    rr = Reranker.from_pretrained(out, backend="torch-int8")
    pairs = [(q, d) for q in QUERIES[:2] for d in DOCUMENTS[:6]]
    assert np.abs(rr.score_pairs(pairs) - fp32.score_pairs(pairs)).max() <= 0.05


def test_export_command(tiny_embedder_dir, tmp_path, capsys):
    corpus = tmp_path / "calib.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(DOCUMENTS)))
    parser = argparse.ArgumentParser(prog="embedforge")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli-export"
    args = parser.parse_args(
        [
            "export",
            str(tiny_embedder_dir),
            "--backend",
            "torch-int8",
            "--out",
            str(out),
            "--calibration",
            str(corpus),
            "--calibration-size",
            "8",
        ]
    )
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["backend"] == "torch-int8" and summary["calibration"]["texts"] == 8
    assert str(corpus) in summary["calibration"]["source"]
    assert Embedder.from_pretrained(out, backend="torch-int8").encode("hello").shape == (64,)


def test_export_command_rejects_a_bad_backend(tiny_embedder_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="embedforge")
    register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(
            ["export", str(tiny_embedder_dir), "--backend", "int4", "--out", str(tmp_path / "o")]
        )
    assert "invalid choice: 'int4'" in capsys.readouterr().err
