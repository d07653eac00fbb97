"""``Index.build`` / ``index.add`` with the encoding spread over Ray actors: the vectors of a local build."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from embedforge.index import Index
from embedforge.index.table import scan
from embedforge.spec import ModelSpec

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


def _vectors(index: Index) -> dict[str, np.ndarray]:
    t = scan(index.table, ["id", "vector"])
    return dict(
        zip(
            t.column("id").to_pylist(),
            np.stack(t.column("vector").to_numpy(zero_copy_only=False)),
            strict=True,
        )
    )


def test_index_built_and_updated_on_ray_actors_equals_a_local_build(
    ray_local, tiny_embedder_dir, scifact_200, tmp_path
):
    from embedforge.scaleout.encoder import RayEmbedder

    spec = ModelSpec(str(tiny_embedder_dir))
    lines = scifact_200.read_text(encoding="utf-8").splitlines(keepends=True)
    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    first.write_text("".join(lines[:150]), encoding="utf-8")
    changed = json.loads(lines[0]) | {"text": "a changed first document"}
    rest.write_text("".join(lines[150:]) + json.dumps(changed) + "\n", encoding="utf-8")

    local = Index.build(first, tmp_path / "local", spec, batch_size=64, show_progress=False)
    local.add(rest, show_progress=False)
    encoder = RayEmbedder(spec, actors=2, block_texts=16)
    try:
        dist = Index.build(first, tmp_path / "ray", encoder, batch_size=64, show_progress=False)
        report = Index.open(tmp_path / "ray", embedder=encoder).add(rest, show_progress=False)
        assert encoder.query_prompt("find it") == spec.load_embedder().query_prompt("find it")
    finally:
        encoder.shutdown()
    assert report.embedded == 51 and report.replaced == 1
    want, got = _vectors(Index.open(tmp_path / "local")), _vectors(Index.open(tmp_path / "ray"))
    assert sorted(got) == sorted(want) and len(got) == 200
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= 1e-5
    assert dist.manifest.fingerprint == local.manifest.fingerprint


def test_index_commands_with_engine_ray_equal_the_local_commands(
    ray_local, tiny_embedder_dir, scifact_200, tmp_path, capsys
):
    from embedforge.index.cli import main  # the index commands (registered in `embedforge` by the lead)

    lines = scifact_200.read_text(encoding="utf-8").splitlines(keepends=True)
    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    first.write_text("".join(lines[:120]), encoding="utf-8")
    rest.write_text("".join(lines[120:]), encoding="utf-8")
    for name, engine in (("local", []), ("ray", ["--engine", "ray", "--actors", "2"])):
        capsys.readouterr()
        build = [
            "index",
            "build",
            str(first),
            "--index",
            str(tmp_path / name),
            "--model",
            str(tiny_embedder_dir),
        ]
        assert main([*build, "--batch-size", "50", "--no-progress", *engine]) == 0
        assert main(["index", "add", str(tmp_path / name), str(rest), "--no-progress", *engine]) == 0
        if engine:  # the two JSON summaries of the Ray run say what each actor embedded
            out = capsys.readouterr().out
            decoder, at, runs = json.JSONDecoder(), 0, []
            while (at := out.find("{", at)) >= 0:
                run, end = decoder.raw_decode(out, at)
                runs.append(run["engine"])
                at = end
            assert [r["documents"] for r in runs] == [120, 80]
            for r in runs:
                assert r["actor_restarts"] == 0 and r["actors"]
                assert sum(a["documents"] for a in r["actors"]) == r["documents"]
                assert all(a["docs_per_second"] > 0 for a in r["actors"])
    capsys.readouterr()
    want, got = _vectors(Index.open(tmp_path / "local")), _vectors(Index.open(tmp_path / "ray"))
    assert sorted(got) == sorted(want) and len(got) == 200
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= 1e-5


def test_an_encoder_actor_killed_with_sigkill_is_restarted_and_the_index_equals_a_local_build(
    ray_local, tiny_embedder_dir, scifact_200, tmp_path
):
    from embedforge.scaleout.encoder import RayEmbedder

    spec = ModelSpec(str(tiny_embedder_dir))
    local = Index.build(scifact_200, tmp_path / "local", spec, batch_size=100, show_progress=False)
    killed: list[int] = []

    def kill_first_actor(block: dict) -> None:
        if not killed:  # after the first block, while the killed actor's next blocks are queued
            os.kill(int(block["pid"]), signal.SIGKILL)
            killed.append(int(block["pid"]))

    encoder = RayEmbedder(spec, actors=2, block_texts=8, on_block=kill_first_actor)
    try:
        Index.build(scifact_200, tmp_path / "ray", encoder, batch_size=100, show_progress=False)
        summary = encoder.summary()
    finally:
        encoder.shutdown()
    assert killed and summary["actor_restarts"] == 1
    assert killed[0] in {a["pid"] for a in summary["actors"]}
    # each block is counted once, by the process whose result arrived: the killed actor's unfinished
    # blocks were encoded again by its replacement
    assert summary["documents"] == 200
    assert any(a["restarted"] and a["documents"] > 0 for a in summary["actors"])
    want, got = _vectors(local), _vectors(Index.open(tmp_path / "ray"))
    assert sorted(got) == sorted(want) and len(got) == 200
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= 1e-5
