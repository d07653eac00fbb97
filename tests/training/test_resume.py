"""A run killed mid-way and resumed from its checkpoint gives the uninterrupted run's losses and weights,
bit for bit, when every run uses the same torch thread count (``threads`` in the config): the killed
run is another process, and float sums depend on the thread count, so no run may inherit the
machine's default (whatever OMP_NUM_THREADS or the core count say)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from embedforge.cli import main as cli_main
from embedforge.training import EmbedderTrainingConfig, train_embedder
from embedforge.training.loop import latest_checkpoint

REPO = Path(__file__).resolve().parents[2]


def _metrics_steps(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_kill_and_resume_reproduces_the_uninterrupted_losses(train_embedder_dir, embedding_jsonl, tmp_path):
    common = dict(
        model=str(train_embedder_dir),
        data=str(embedding_jsonl),
        max_steps=6,
        batch_size=4,
        learning_rate=5e-3,
        warmup_steps=2,
        num_negatives=2,
        temperature=0.05,
        save_every=2,
        show_progress=False,
        device="cpu",
        chunk_size=3,
        threads=1,
    )
    killed = EmbedderTrainingConfig(output_dir=str(tmp_path / "killed"), **common)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(killed.model_dump_json())
    # the machine's own thread setting is left as it is: the config's threads governs every run
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedforge.training.cli", "train", "embedder", str(cfg_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if any(s >= 3 for s in _metrics_steps(metrics)):  # past the step-2 checkpoint
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"the run was not killed mid-way (rc {proc.returncode}): {proc.stderr.read()[-2000:]}"
    )
    ckpt = latest_checkpoint(tmp_path / "killed")
    assert ckpt is not None and ckpt.name.startswith("step-")
    done = int(ckpt.name.split("-")[1])
    assert 2 <= done < 6
    from embedforge import Embedder

    assert Embedder.from_pretrained(ckpt).encode(["a checkpoint loads"]).shape == (1, 64)

    assert cli_main(["train", "embedder", str(cfg_path), "--resume"]) == 0  # the CLI's --resume
    straight = train_embedder(EmbedderTrainingConfig(output_dir=str(tmp_path / "straight"), **common))
    assert len(straight.losses) == 6
    assert _metrics_steps(metrics) == list(range(1, 7))  # lines written after the checkpoint were replaced
    resumed_losses = [json.loads(x)["loss"] for x in metrics.read_text().splitlines()]
    assert resumed_losses == straight.losses  # bit-identical (JSON round-trips a float exactly)
    a = load_file(tmp_path / "killed" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max().item())


def test_resume_without_checkpoint_is_an_error(train_embedder_dir, embedding_jsonl, tmp_path):
    cfg = EmbedderTrainingConfig(
        model=str(train_embedder_dir),
        data=str(embedding_jsonl),
        output_dir=str(tmp_path / "o"),
        max_steps=2,
        batch_size=4,
        num_negatives=2,
        resume=True,
        show_progress=False,
    )
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train_embedder(cfg)


def test_resume_with_another_thread_count_warns(train_embedder_dir, embedding_jsonl, tmp_path):
    common = dict(
        model=str(train_embedder_dir),
        data=str(embedding_jsonl),
        output_dir=str(tmp_path / "o"),
        batch_size=4,
        num_negatives=2,
        save_every=1,
        show_progress=False,
        device="cpu",
    )
    before = torch.get_num_threads()
    train_embedder(EmbedderTrainingConfig(max_steps=2, threads=1, **common))
    assert torch.get_num_threads() == before  # the run's setting is restored
    with pytest.warns(UserWarning, match="written with 1"):
        train_embedder(EmbedderTrainingConfig(max_steps=3, threads=2, resume=True, **common))
