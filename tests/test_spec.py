"""``ModelSpec``: one model specification, spelled the same by every command, loading the same model."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle

import numpy as np
import pytest

from embedforge import Embedder, Reranker
from embedforge.cli import build_parser, main
from embedforge.loading import resolve_device, resolve_dtype
from embedforge.spec import BACKENDS, DTYPES, ModelSpec, process_threads

# Which models each sub-command loads, by flag prefix ("" = --model and the unprefixed options;
# "reranker-" = --reranker, --reranker-device, ...). The flags themselves are derived from the
# dataclass fields below, never listed per command.
MODEL_COMMANDS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("embed",): ("",),
    ("rerank",): ("",),
    ("eval", "retrieval"): ("", "reranker-"),
    ("eval", "sts"): ("",),
    ("eval", "bitext"): ("",),
    ("eval", "crosslingual"): ("",),
    ("mine-negatives",): ("",),
    ("index", "build"): ("",),
    ("synth", "retrieval"): ("embedder-", "llm-"),
    ("synth", "bitext"): ("llm-",),
    ("synth", "sts"): ("llm-",),
    ("synth", "classification"): ("llm-",),
    ("synth", "filter"): ("",),
    ("synth", "negatives"): ("embedder-",),
    ("serve",): ("embedder-", "reranker-"),
}
# commands that load no model from flags, and why
OTHER_COMMANDS = {
    ("train", "embedder"): "the model and its options come from the config file",
    ("train", "reranker"): "the model and its options come from the config file",
    ("merge",): "merges tensors of checkpoints without loading a model",
    ("index", "add"): "the model comes from the index manifest (runtime overrides only)",
    ("index", "delete"): "no model: removes rows by id",
    ("index", "info"): "no model: reads the manifest and the table",
    ("index", "optimize"): "no model: compacts, builds ANN indexes and quantised codes",
    ("search",): "the embedder comes from the index manifest; --reranker* are the full ModelSpec options",
    ("export",): "MODEL is positional and --backend names the export's target",
    ("recipe", "run"): "every model and option comes from the recipe file",
    ("recipe", "plan"): "every model and option comes from the recipe file; loads nothing",
}


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaf_parsers(child, (*path, name))


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


def _expected(prefix: str, *, with_model: bool = True) -> dict[str, str]:
    """flag -> argparse destination, written from the dataclass fields (independently of the spec's helpers)."""
    out = {}
    for f in dataclasses.fields(ModelSpec):
        if f.name == "model":
            if with_model:
                name = prefix.rstrip("-") or "model"
                out[f"--{name}"] = name.replace("-", "_")
        else:
            out["--" + prefix + f.name.replace("_", "-")] = (prefix + f.name).replace("-", "_")
    return out


def test_every_model_loading_command_accepts_the_same_model_flags():
    leaves = dict(_leaf_parsers(build_parser()))
    unclassified = set(leaves) - set(MODEL_COMMANDS) - set(OTHER_COMMANDS)
    assert not unclassified, f"classify the new command(s) {unclassified} in this test"
    assert set(MODEL_COMMANDS) <= set(leaves)
    unprefixed_options = _expected("", with_model=False)
    assert len(unprefixed_options) == len(dataclasses.fields(ModelSpec)) - 1 == 9
    for command, prefixes in MODEL_COMMANDS.items():
        flags = _flags(leaves[command])
        # every model-loading command takes the unprefixed options (they set its model, or are the
        # default of its prefixed models) and hides progress bars the same way
        wanted = dict(unprefixed_options, **{"--no-progress": "no_progress"} if command != ("serve",) else {})
        for prefix in prefixes:
            wanted.update(_expected(prefix))
        for flag, dest in wanted.items():
            assert flag in flags, f"`embedforge {' '.join(command)}` lacks {flag}"
            assert flags[flag].dest == dest, (command, flag, flags[flag].dest)
        for name in ("max_length", "batch_tokens", "threads"):
            for prefix in {"", *prefixes}:
                assert flags["--" + prefix + name.replace("_", "-")].type is int


def test_progress_flag_is_spelled_no_progress_and_old_quiet_still_works():
    parser = build_parser()
    for argv in (
        ["eval", "sts", "--model", "m", "--data", "d.csv"],
        ["mine-negatives", "--model", "m", "--data", "d", "--out", "o.jsonl"],
        ["merge", "a", "b", "--out", "o"],
    ):
        assert parser.parse_args([*argv, "--no-progress"]).no_progress is True
        assert parser.parse_args([*argv, "--quiet"]).no_progress is True
        assert parser.parse_args(argv).no_progress is False


def test_spec_is_picklable_and_round_trips_through_json():
    spec = ModelSpec(
        "Qwen/Qwen3-Embedding-0.6B",
        revision="c54f2e6",
        device="cpu",
        dtype="bfloat16",
        max_length=512,
        batch_tokens=2048,
        threads=2,
        allow_pickle=True,
        trust_remote_code=True,
    )
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert ModelSpec.from_dict({"model": "m"}) == ModelSpec("m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.device = "cuda"  # type: ignore[misc]
    assert spec.replace(device="cuda:1").device == "cuda:1" and spec.device == "cpu"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": ""}, "model must be a local directory or a Hub id, got ''"),
        (
            {"backend": "int4"},
            r"backend 'int4' is not supported; use one of \['torch', 'torch-int8', 'onnx', 'onnx-int8'\]",
        ),
        ({"dtype": "int3"}, "dtype 'int3' is not supported; use one of"),
        ({"device": "gpu0"}, "device 'gpu0' is not a torch device"),
        ({"threads": 0}, "threads must be a positive integer or None, got 0"),
        ({"max_length": True}, "max_length must be a positive integer or None, got True"),
        ({"batch_tokens": "4096"}, "batch_tokens must be a positive integer or None, got '4096'"),
        ({"allow_pickle": "yes"}, "allow_pickle must be true or false, got 'yes'"),
        ({"revision": ""}, "revision must be a non-empty string or None"),
    ],
)
def test_bad_values_give_errors_naming_the_value_and_the_allowed_ones(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec(**{"model": "m", **changes})


def test_from_dict_rejects_unknown_and_missing_fields():
    with pytest.raises(ValueError, match=r"unknown model spec field\(s\) \['quantize'\]; allowed: \['model'"):
        ModelSpec.from_dict({"model": "m", "quantize": "int8"})
    with pytest.raises(ValueError, match="needs 'model'"):
        ModelSpec.from_dict({"device": "cpu"})


def test_every_dtype_and_backend_the_spec_accepts_is_one_the_loader_accepts():
    cpu = resolve_device("cpu")
    for name in DTYPES:
        resolve_dtype(name, cpu)  # raises for a name the loader does not know
    assert BACKENDS == ("torch", "torch-int8", "onnx", "onnx-int8")


def test_from_args_reads_every_flag_back():
    argv = ["embed", "in.txt", "-o", "out.npy", "--model", "m", "--revision", "v1", "--device", "cpu"]
    argv += ["--dtype", "bf16", "--max-length", "64", "--batch-tokens", "512", "--threads", "2"]
    argv += ["--backend", "torch", "--allow-pickle", "--trust-remote-code"]
    args = build_parser().parse_args(argv)
    assert ModelSpec.from_args(args) == ModelSpec(
        "m",
        revision="v1",
        device="cpu",
        dtype="bf16",
        max_length=64,
        batch_tokens=512,
        threads=2,
        backend="torch",
        allow_pickle=True,
        trust_remote_code=True,
    )
    # defaults: the dataclass's own
    args = build_parser().parse_args(["embed", "in.txt", "-o", "out.npy", "--model", "m"])
    assert ModelSpec.from_args(args) == ModelSpec("m")


def test_a_prefixed_model_inherits_how_it_runs_but_not_what_it_is():
    parser = build_parser()
    base = ["eval", "retrieval", "--model", "e", "--data", "d", "--device", "cpu", "--max-length", "64"]
    args = parser.parse_args([*base, "--allow-pickle"])
    assert ModelSpec.from_args(args, "reranker-") is None  # an optional model not given
    args = parser.parse_args([*base, "--allow-pickle", "--reranker", "r", "--reranker-revision", "v2"])
    from embedforge.spec import RUNTIME_OPTIONS

    rr = ModelSpec.from_args(args, "reranker-", inherit=RUNTIME_OPTIONS)
    assert rr == ModelSpec("r", revision="v2", device="cpu", allow_pickle=True)  # max_length is its own
    args = parser.parse_args([*base, "--reranker", "r", "--reranker-device", "meta"])
    assert ModelSpec.from_args(args, "reranker-", inherit=RUNTIME_OPTIONS).device == "meta"
    assert ModelSpec.from_args(args).device == "cpu"


def test_bad_model_options_on_the_command_line_fail_before_any_work(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    out = tmp_path / "out.npy"
    assert main(["embed", str(src), "-o", str(out), "--model", "m", "--threads", "0"]) == 2
    assert "threads must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["embed", str(src), "-o", str(out), "--backend", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    assert not out.exists()


def test_process_threads_are_one_count():
    assert process_threads(ModelSpec("a", threads=2), None, ModelSpec("b")) == 2
    assert process_threads(ModelSpec("a"), None) is None
    with pytest.raises(ValueError, match=r"threads is process-wide, but the models ask for \[2, 3\]"):
        process_threads(ModelSpec("a", threads=2), ModelSpec("b", threads=3))


def test_load_embedder_gives_the_same_vectors_as_from_pretrained(tiny_embedder_dir):
    texts = ["What is the capital of China?", "Gravity is a force."]
    spec = ModelSpec(str(tiny_embedder_dir), device="cpu", max_length=16, batch_tokens=64)
    got = pickle.loads(pickle.dumps(spec)).load_embedder()  # what a worker process does
    ref = Embedder.from_pretrained(tiny_embedder_dir, device="cpu", max_length=16, batch_tokens=64)
    assert got.max_length == ref.max_length == 16 and got.fingerprint == ref.fingerprint
    np.testing.assert_array_equal(got.encode_queries(texts), ref.encode_queries(texts))
    np.testing.assert_array_equal(got.encode_documents(texts), ref.encode_documents(texts))
    # an override replaces a spec field; other overrides go to the loader
    assert spec.load_embedder(max_length=8).max_length == 8
    assert spec.load_embedder(normalize=False).normalize is False


def test_load_reranker_gives_the_same_scores_as_from_pretrained(tiny_reranker_dir):
    docs = ["Beijing is the capital of China.", "Gravity is a force."]
    got = ModelSpec(str(tiny_reranker_dir), device="cpu").load_reranker()
    ref = Reranker.from_pretrained(tiny_reranker_dir, device="cpu")
    assert got.max_length == ref.max_length  # no max_length in the spec: the reranker's default
    np.testing.assert_array_equal(got.score("capital of China", docs), ref.score("capital of China", docs))


def test_revision_reaches_the_hub_download_and_is_refused_for_a_local_directory(
    tiny_embedder_dir, monkeypatch
):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, *, revision=None, **kwargs):  # the Hub lies outside the project
        calls.append((repo_id, revision))
        return str(tiny_embedder_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    emb = ModelSpec("Qwen/Qwen3-Embedding-0.6B", revision="c54f2e6", device="cpu").load_embedder()
    assert calls == [("Qwen/Qwen3-Embedding-0.6B", "c54f2e6")]
    ref = Embedder.from_pretrained(tiny_embedder_dir, device="cpu")
    np.testing.assert_array_equal(emb.encode(["x"]), ref.encode(["x"]))

    local = ModelSpec(str(tiny_embedder_dir), revision="c54f2e6")
    with pytest.raises(
        ValueError, match="revision 'c54f2e6' applies to Hub ids only, but .* is a local directory"
    ):
        local.load_embedder()
    with pytest.raises(ValueError, match="applies to Hub ids only"):
        local.load_reranker()
    assert len(calls) == 1


def test_serve_settings_produce_model_specs(monkeypatch):
    from embedforge.server.cli import settings_from_args

    for name in [
        k for k in list(__import__("os").environ) if k.startswith("EMBEDFORGE_") and k != "EMBEDFORGE_SHARED"
    ]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EMBEDFORGE_EMBEDDER_REVISION", "v1")
    argv = ["serve", "--embedder", "/e", "--reranker", "/r", "--device", "cpu", "--max-length", "64"]
    argv += ["--reranker-dtype", "bfloat16", "--torch-threads", "2", "--allow-pickle"]
    settings = settings_from_args(build_parser().parse_args(argv))
    common = dict(device="cpu", max_length=64, batch_tokens=16384, threads=2, allow_pickle=True)
    assert settings.embedder_spec() == ModelSpec("/e", revision="v1", **common)
    assert settings.reranker_spec() == ModelSpec("/r", dtype="bfloat16", **common)
    assert settings.process_threads() == 2
    args = build_parser().parse_args(["serve", "--reranker", "/r", "--reranker-batch-tokens", "64"])
    settings = settings_from_args(args)
    assert settings.embedder_spec() is None and settings.reranker_spec() == ModelSpec("/r", batch_tokens=64)
    with pytest.raises(ValueError, match="threads is process-wide"):
        settings_from_args(
            build_parser().parse_args(
                ["serve", "--embedder", "/e", "--reranker", "/r", "--embedder-threads", "3", "--threads", "2"]
            )
        )


def test_synth_local_llm_loads_through_the_spec(tiny_embedder_plain_dir):
    from embedforge.synthesis.cli import _llm_spec
    from embedforge.synthesis.llm import make_backend

    argv = [
        "synth",
        "sts",
        "--corpus",
        "c.jsonl",
        "--out",
        "o.jsonl",
        "--llm",
        f"local:{tiny_embedder_plain_dir}",
    ]
    args = build_parser().parse_args(
        [*argv, "--device", "cpu", "--llm-dtype", "float32", "--trust-remote-code"]
    )
    spec = _llm_spec(args)
    assert spec == ModelSpec(
        str(tiny_embedder_plain_dir), device="cpu", dtype="float32", trust_remote_code=True
    )
    backend = make_backend(args.llm, local=spec)
    assert backend.spec == spec and backend.device.type == "cpu"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="applies to Hub ids only"):
        make_backend(args.llm, local=spec.replace(revision="v1"))
    url = build_parser().parse_args(["synth", "sts", "--corpus", "c", "--out", "o", "--llm", "http://h/v1"])
    assert _llm_spec(url) is None


# --------------------------------------------------------------- embed checks its output path first
@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("out.csv", "unsupported output .*out.csv.*: use one of .npy, .parquet"),
        ("a_file.txt/sub/out.npy", "cannot create the output .*a_file.txt.* is not a directory"),
        ("a_dir.npy", "output .*a_dir.npy.* is a directory"),
    ],
)
def test_embed_checks_its_output_before_loading_the_model(tmp_path, capsys, output, message):
    import re

    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    (tmp_path / "a_file.txt").write_text("x")
    (tmp_path / "a_dir.npy").mkdir()
    # the model does not exist: had it been loaded first, the error would name the model
    rc = main(["embed", str(src), "-o", str(tmp_path / output), "--model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(message, err), err
    assert "no-model" not in err


def test_embed_output_in_an_unwritable_directory_fails_first(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root may write anywhere: an unwritable directory cannot be made")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc = main(["embed", str(tmp_path / "in.txt"), "-o", str(locked / "out.npy"), "--model", "m"])
    finally:
        locked.chmod(0o700)
    assert rc == 2 and "is not writable" in capsys.readouterr().err


def test_embed_creates_a_missing_output_directory(tiny_embedder_dir, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    out = tmp_path / "new" / "sub" / "out.npy"
    assert main(["embed", str(src), "-o", str(out), "--model", str(tiny_embedder_dir), "--no-progress"]) == 0
    ref = Embedder.from_pretrained(tiny_embedder_dir).encode_documents(["a", "b"])
    np.testing.assert_allclose(np.load(out), ref, atol=1e-6)
