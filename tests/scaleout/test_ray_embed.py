"""``embed --engine ray`` on a local Ray of 2 CPUs and 2 actors: the single-process output, exactly once,
through an actor killed with SIGKILL and through a whole job killed and started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedforge.cli import main
from embedforge.corpus import read_documents
from embedforge.scaleout import EmbedJobConfig, EngineOptions, run_embed_job
from embedforge.scaleout.parts import COMMITS, parts_dir_of
from embedforge.spec import ModelSpec

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TOL = 1e-5


def _read(path: Path) -> tuple[list[str], np.ndarray]:
    if path.suffix == ".npy":
        m = np.load(path)
        return [str(i) for i in range(len(m))], m
    table = pq.read_table(path)
    return table.column("id").to_pylist(), np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def assert_same_output(got: Path, want: Path) -> None:
    """Same ids, and per vector max |delta| <= 1e-5 once both are sorted by id."""
    gids, gvec = _read(got)
    wids, wvec = _read(want)
    assert len(gids) == len(set(gids)), "a document is stored more than once"
    assert sorted(gids) == sorted(wids)
    go, wo = np.argsort(gids), np.argsort(wids)
    assert gvec.shape == wvec.shape
    assert np.abs(gvec[go] - wvec[wo]).max() <= TOL
    assert gids == wids  # and in corpus order, as the single-process command writes them


def _embed(corpus: Path, out: Path, model: Path, *extra: str) -> None:
    assert main(["embed", str(corpus), "-o", str(out), "--model", str(model), "--no-progress", *extra]) == 0


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("suffix", "options"),
    [(".parquet", ()), (".npy", ("--queries", "--dim", "32"))],
    ids=["documents-parquet", "queries-dim32-npy"],
)
def test_ray_equals_single_process_on_the_tiny_checkpoint(
    ray_local, tiny_embedder_dir, scifact_corpus, tmp_path, suffix, options, capsys
):
    corpus = scifact_corpus(60)
    local, dist = tmp_path / f"local{suffix}", tmp_path / f"ray{suffix}"
    _embed(corpus, local, tiny_embedder_dir, *options)
    capsys.readouterr()
    _embed(corpus, dist, tiny_embedder_dir, *options, "--engine", "ray", "--actors", "2", "--part-rows", "16")
    assert_same_output(dist, local)
    assert not parts_dir_of(dist).exists()  # merged and cleaned up
    err = capsys.readouterr().err  # the job's JSON summary
    summary, _ = json.JSONDecoder().raw_decode(err, err.index('{\n  "output"'))
    assert summary["documents"] == 60 and summary["parts_total"] == summary["parts_done"] == 4
    assert summary["blocks"] == 4 and summary["actor_restarts"] == 0
    assert sum(a["documents"] for a in summary["actors"]) == 60
    assert all(a["docs_per_second"] > 0 for a in summary["actors"])


@pytest.mark.shared_data
def test_ray_reads_a_parquet_corpus_by_row_groups_like_the_single_process_reader(
    ray_local, tiny_embedder_dir, scifact_corpus, tmp_path
):
    import pyarrow as pa

    docs = read_documents(scifact_corpus(70))
    corpus = tmp_path / "corpus.parquet"
    table = pa.table(
        {"_id": [d.id for d in docs], "title": [d.title for d in docs], "text": [d.text for d in docs]}
    )
    pq.write_table(table, corpus, row_group_size=9)  # 8 row groups: parts of whole groups
    local, dist = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    _embed(corpus, local, tiny_embedder_dir)
    _embed(corpus, dist, tiny_embedder_dir, "--engine", "ray", "--actors", "2", "--part-rows", "16")
    assert_same_output(dist, local)
    assert _read(dist)[0] == [d.id for d in docs]


@pytest.mark.shared_data
def test_ray_equals_single_process_on_minilm_with_scifact(ray_local, minilm_dir, scifact_200, tmp_path):
    local, dist = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    _embed(scifact_200, local, minilm_dir)
    _embed(scifact_200, dist, minilm_dir, "--engine", "ray", "--actors", "2", "--part-rows", "32")
    assert_same_output(dist, local)
    assert _read(dist)[0] == [d.id for d in read_documents(scifact_200)]


@pytest.mark.shared_data
def test_an_actor_killed_with_sigkill_is_restarted_and_nothing_is_lost_or_doubled(
    ray_local, tiny_embedder_dir, scifact_200, tmp_path
):
    local, dist = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    _embed(scifact_200, local, tiny_embedder_dir)
    killed: list[int] = []

    def kill_first_actor(row: dict) -> None:
        if not killed:  # mid-job: after the first block, while the others are queued or running
            os.kill(int(row["pid"]), signal.SIGKILL)
            killed.append(int(row["pid"]))

    config = EmbedJobConfig(ModelSpec(str(tiny_embedder_dir)), part_rows=8, show_progress=False)
    summary = run_embed_job(
        scifact_200, dist, config, EngineOptions(engine="ray", actors=2), on_block=kill_first_actor
    )
    assert killed
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)  # that process is gone
    assert summary.actor_restarts >= 1  # a new process took the killed actor's place and its blocks
    assert killed[0] in {a.pid for a in summary.actors}
    assert summary.documents == 200 and summary.parts_done == summary.parts_total == 25
    assert sum(a.documents for a in summary.actors) >= 200
    assert_same_output(dist, local)


@pytest.mark.shared_data
def test_a_killed_job_resumes_from_its_committed_parts(
    ray_local, tiny_embedder_dir, scifact_corpus, tmp_path
):
    corpus = scifact_corpus(600)
    local, dist = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    _embed(corpus, local, tiny_embedder_dir)
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "embedforge.cli", "embed", str(corpus), "-o", str(dist)]
    cmd += ["--model", str(tiny_embedder_dir), "--no-progress", "--engine", "ray", "--address", address]
    cmd += ["--actors", "2", "--part-rows", "10"]
    commits = parts_dir_of(dist) / COMMITS
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        done = 0
        while done < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if commits.exists():
                done = commits.read_bytes().count(b"\n")  # one line per committed part
        assert proc.poll() is None, (
            f"the job ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
        )
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    committed = commits.read_bytes().count(b"\n")
    assert 3 <= committed < 60, committed
    assert not dist.exists()
    config = EmbedJobConfig(ModelSpec(str(tiny_embedder_dir)), part_rows=10, show_progress=False)
    summary = run_embed_job(corpus, dist, config, EngineOptions(engine="ray", actors=2))
    assert summary.parts_skipped == committed
    assert summary.parts_done == 60 - committed
    assert sum(a.documents for a in summary.actors) >= 600 - 10 * committed
    assert_same_output(dist, local)
