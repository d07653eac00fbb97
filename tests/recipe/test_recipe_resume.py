"""A recipe run killed (SIGKILL, a real process) in the middle of a training stage continues with
``--resume`` and ends with the uninterrupted run's result, bit for bit (one torch thread in both)."""

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
from recipe_testdata import recipe_dict, write_recipe
from safetensors.torch import load_file

from embedforge.cli import main as cli_main
from embedforge.recipe import load_recipe, run_recipe

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _steps(path: Path) -> list[int]:
    if not path.is_file():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_killed_in_weak_training_resumes_to_the_uninterrupted_result(
    tmp_path, recipe_model_dir, tiny_beir, persona_file, fake_llm
):
    killed = write_recipe(
        tmp_path / "killed.yaml",
        recipe_dict(recipe_model_dir, tiny_beir, persona_file, fake_llm.url, tmp_path / "killed"),
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedforge.cli", "recipe", "run", str(killed), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "killed" / "weak" / "model" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if any(s >= 3 for s in _steps(metrics)):  # past the step-2 checkpoint, before the last step
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"not killed mid-way (rc {proc.returncode}): {proc.stderr.read()[-3000:]}"
    )
    state = json.loads((tmp_path / "killed" / "weak" / "stage.json").read_text())
    assert state["state"] == "running"
    for done in ("synthesize", "filter"):
        assert json.loads((tmp_path / "killed" / done / "stage.json").read_text())["state"] == "complete"

    # without --resume the interrupted stage is not silently thrown away
    assert cli_main(["recipe", "run", str(killed), "--no-progress"]) == 2
    resumed = run_recipe(load_recipe(killed), resume=True, show_progress=False)
    actions = resumed.actions()
    assert actions["synthesize"] == actions["filter"] == "skipped"
    assert actions["weak"] == "resumed"
    weak = json.loads((tmp_path / "killed" / "weak" / "stage.json").read_text())
    assert weak["state"] == "complete" and weak["summary"]["resumed_from"] >= 2 and weak["runs"] == 2
    assert _steps(metrics) == list(range(1, 7))

    straight = run_recipe(
        load_recipe(
            write_recipe(
                tmp_path / "straight.yaml",
                recipe_dict(recipe_model_dir, tiny_beir, persona_file, fake_llm.url, tmp_path / "straight"),
            )
        ),
        show_progress=False,
    )
    a, b = (json.loads((r.recipe.output_dir / "report.json").read_text()) for r in (resumed, straight))
    assert a["models"].keys() == b["models"].keys()
    for m in a["models"]:
        assert a["models"][m]["metrics"] == b["models"][m]["metrics"], m
    assert a["losses"] == b["losses"]
    for stage in ("weak", "supervised", "merge"):
        x = _tensors(tmp_path / "killed" / stage / "model")
        y = _tensors(tmp_path / "straight" / stage / "model")
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), (stage, k)
    for stage in ("synthesize", "filter", "mine"):  # the data stages wrote the same bytes
        assert (
            json.loads((tmp_path / "killed" / stage / "stage.json").read_text())["outputs_hash"]
            == json.loads((tmp_path / "straight" / stage / "stage.json").read_text())["outputs_hash"]
        )
