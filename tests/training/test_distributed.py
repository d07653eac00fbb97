"""Two real processes (torchrun, gloo on CPU) give the loss and gradients of one process that
holds the combined batch, and train to the same losses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embedforge import Embedder
from embedforge.losses import Qwen3InfoNCELoss
from embedforge.training import EmbedderTrainingConfig, train_embedder
from embedforge.training.data import EmbeddingRecord
from embedforge.training.embedder_trainer import embedder_batch, embedder_step

REPO = Path(__file__).resolve().parents[2]

WORKER = r"""
import json, sys
import torch
import torch.distributed as dist
from embedforge import Embedder
from embedforge.losses import Qwen3InfoNCELoss
from embedforge.training import EmbedderTrainingConfig, train_embedder
from embedforge.training import distributed as D
from embedforge.training.data import EmbeddingRecord
from embedforge.training.embedder_trainer import embedder_batch, embedder_step

model, records_path, out_grads, cfg_path = sys.argv[1:5]
info, device = D.setup("cpu")
assert info.world_size == 2, info
records = [EmbeddingRecord.model_validate(json.loads(l)) for l in open(records_path)]
n = len(records) // 2
local = records[info.rank * n : (info.rank + 1) * n]
embedder = Embedder.from_pretrained(model, dtype="float32")
embedder.model.train()
batch = embedder_batch(embedder, local, 2)
loss = embedder_step(embedder, Qwen3InfoNCELoss(temperature=0.05), batch, chunk_size=2)
params = list(embedder.model.parameters())
D.all_reduce_grads(params)
total = D.sum_over_ranks(loss)
if info.is_main:
    torch.save({"loss": total, "grads": {k: p.grad for k, p in embedder.model.named_parameters()}}, out_grads)
cfg = EmbedderTrainingConfig.model_validate(json.load(open(cfg_path)))
train_embedder(cfg)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_combined_batch(train_embedder_dir, make_records, tmp_path):
    rows = make_records(k=2)[:4]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(
        model=str(train_embedder_dir),
        data=str(data),
        max_steps=3,
        batch_size=4,
        learning_rate=1e-4,
        num_negatives=2,
        temperature=0.05,
        show_progress=False,
        device="cpu",
    )
    cfg2 = EmbedderTrainingConfig(output_dir=str(tmp_path / "two"), **common)
    (tmp_path / "cfg.json").write_text(cfg2.model_dump_json())
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        str(tmp_path / "worker.py"),
        str(train_embedder_dir),
        str(data),
        str(tmp_path / "grads.pt"),
        str(tmp_path / "cfg.json"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # one process, the combined batch, no chunking
    embedder = Embedder.from_pretrained(train_embedder_dir, dtype="float32")
    embedder.model.train()
    batch = embedder_batch(embedder, [EmbeddingRecord.model_validate(r) for r in rows], 2)
    loss = embedder_step(embedder, Qwen3InfoNCELoss(temperature=0.05), batch)
    two = torch.load(tmp_path / "grads.pt", weights_only=True)
    assert two["loss"] == pytest.approx(loss, rel=1e-5)
    grads = dict(embedder.model.named_parameters())
    for name, g in two["grads"].items():
        torch.testing.assert_close(
            g, grads[name].grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )

    # the trainer: same per-step losses (so the same updates) over three steps
    one = train_embedder(EmbedderTrainingConfig(output_dir=str(tmp_path / "one"), **common))
    lines = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    for r, expected in zip(lines, one.losses, strict=True):
        assert r["loss"] == pytest.approx(expected, rel=1e-5)
    assert one.losses[0] != one.losses[2]  # the weights did move
    reloaded = Embedder.from_pretrained(tmp_path / "two").encode(["a check"])
    assert reloaded.shape == (1, 64)


def _launch(nodes: int, node_rank: int, nproc: int, port: int, cfg: Path, env: dict) -> subprocess.Popen:
    """The README's multi-node command (``torchrun`` is ``python -m torch.distributed.run``)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(nodes),
        "--node-rank",
        str(node_rank),
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        "-m",
        "embedforge.cli",
        "train",
        "embedder",
        str(cfg),
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _losses(out: Path) -> list[float]:
    return [
        json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]


@pytest.mark.distributed
@pytest.mark.slow
def test_the_documented_two_node_command_equals_one_node_with_two_processes(
    train_embedder_dir, make_records, tmp_path
):
    """Two "nodes" on loopback (``--nnodes 2 --node-rank 0|1``, one process each) running the README's
    command train exactly as one node with ``--nproc-per-node 2``: same losses, same weights."""
    from safetensors.torch import load_file

    rows = make_records(k=2)[:8]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    outs = {}
    for name in ("one-node", "two-nodes"):
        cfg = EmbedderTrainingConfig(
            model=str(train_embedder_dir),
            data=str(data),
            output_dir=str(tmp_path / name),
            max_steps=3,
            batch_size=4,
            learning_rate=1e-4,
            num_negatives=2,
            temperature=0.05,
            show_progress=False,
            device="cpu",
            threads=1,
        )
        path = tmp_path / f"{name}.json"
        path.write_text(cfg.model_dump_json())
        port = _free_port()
        if name == "one-node":
            procs = [_launch(1, 0, 2, port, path, env)]
        else:
            procs = [_launch(2, rank, 1, port, path, env) for rank in (0, 1)]
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-4000:]
        outs[name] = tmp_path / name
    assert _losses(outs["two-nodes"]) == _losses(outs["one-node"])
    assert len(_losses(outs["one-node"])) == 3
    a = load_file(outs["one-node"] / "model.safetensors")
    b = load_file(outs["two-nodes"] / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    base = {
        k.removeprefix("model."): v for k, v in load_file(train_embedder_dir / "model.safetensors").items()
    }
    assert set(a) <= set(base)
    assert any(not torch.equal(a[k], base[k]) for k in a)  # it trained
