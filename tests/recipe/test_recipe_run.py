"""A whole recipe on a tiny random Qwen3 and a tiny BEIR set, against the fake LLM: every stage
runs and reports; a rerun recomputes nothing; a changed setting reruns that stage and what follows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from recipe_testdata import recipe_dict, write_recipe

from embedforge.cli import main as cli_main
from embedforge.recipe import STAGES, load_recipe, run_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, recipe_model_dir, tiny_beir, persona_file, fake_llm):
    root = tmp_path_factory.mktemp("recipe-full")
    path = write_recipe(
        root / "recipe.yaml",
        recipe_dict(recipe_model_dir, tiny_beir, persona_file, fake_llm.url, root / "out"),
    )
    result = run_recipe(load_recipe(path), show_progress=False)
    return path, result


def _stage_json(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "stage.json").read_text())


def test_full_run_writes_every_stage_and_the_report(full_run):
    path, result = full_run
    out = result.recipe.output_dir
    assert result.actions() == {s: "ran" for s in STAGES}
    for stage in STAGES:
        rec = _stage_json(out, stage)
        assert rec["state"] == "complete" and rec["inputs_hash"] and rec["outputs_hash"]
    synth = _stage_json(out, "synthesize")["summary"]
    assert synth["pairs"] == 16 and synth["missing"] == 0  # 16 documents, one pair each
    kept = _stage_json(out, "filter")["summary"]
    assert kept["total"] == 16 and kept["kept"] + kept["low_cosine"] + kept["exact_duplicates"] == 16
    mine = _stage_json(out, "mine")["summary"]
    assert mine["model"] == "weak" and mine["labeled"] == 12 and mine["synthetic"] == kept["kept"]
    sup = _stage_json(out, "supervised")["summary"]
    assert sup["start"] == "weak" and sup["records"] == 12 + kept["kept"] and sup["steps"] == 6
    assert _stage_json(out, "merge")["summary"]["parents"] == [
        "supervised/model",
        "supervised/model/checkpoints/step-0000004",
    ]

    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"base", "weak", "supervised", "merge"}
    for m in report["models"].values():
        assert 0.0 <= m["metrics"]["ndcg@10"] <= 1.0 and "recall@100" in m["metrics"]
    assert [len(report["losses"][s]) for s in ("weak", "supervised")] == [6, 6]
    assert set(report["plots"]) == {"loss_curves.png", "ndcg_per_stage.png"}
    for png in report["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| stage | model | nDCG@10 | Recall@100 | time |" in md
    assert md.count("\n| ") >= 1 + 1 + len(STAGES)  # header, base, one row per stage
    # the miner's corpus encodings (weak model, same corpus) served the weak model's evaluation
    assert report["models"]["weak"]["corpus_cached"] is True


def test_rerun_recomputes_nothing(full_run):
    path, first = full_run
    out = first.recipe.output_dir
    before = {s: (out / s / "stage.json").stat().st_mtime_ns for s in STAGES}
    weights = (out / "merge" / "model" / "model.safetensors").stat().st_mtime_ns
    again = run_recipe(load_recipe(path), show_progress=False)
    assert again.actions() == {s: "skipped" for s in STAGES}
    assert {s: (out / s / "stage.json").stat().st_mtime_ns for s in STAGES} == before
    assert (out / "merge" / "model" / "model.safetensors").stat().st_mtime_ns == weights


def test_changed_setting_reruns_that_stage_and_downstream_only(full_run, tmp_path):
    path, first = full_run
    # a copy of the finished run (mtimes kept) is current where it lies: outputs are checked by content
    recipe = yaml_load(path)
    recipe["output_dir"] = str(tmp_path / "out")
    shutil.copytree(first.recipe.output_dir, tmp_path / "out", copy_function=shutil.copy2)
    copy = write_recipe(tmp_path / "recipe.yaml", recipe)
    assert cli_main(["recipe", "run", str(copy), "--no-progress"]) == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["stages"][0]["action"] == "skipped"

    recipe["stages"]["merge"]["t"] = [0.25]
    write_recipe(copy, recipe)
    result = run_recipe(load_recipe(copy), show_progress=False)
    upstream = ("synthesize", "filter", "weak", "mine", "supervised")
    assert result.actions() == {**{s: "skipped" for s in upstream}, "merge": "ran", "evaluate": "ran"}
    why = next(s.why for s in result.stages if s.stage == "merge")
    assert "settings.t" in why
    models = json.loads((tmp_path / "out" / "report.json").read_text())["models"]
    # nothing is encoded twice: only the new merged model's corpus is encoded
    assert {m: v["corpus_cached"] for m, v in models.items()} == {
        "base": True,
        "weak": True,
        "supervised": True,
        "merge": False,
    }

    # mid-way: the miner and everything after it (k: 3 would not do: the trainer reads the first 2
    # negatives, which k leaves as they were, so the supervised model and what follows stay current)
    recipe["stages"]["mine"]["skip_top"] = 2
    write_recipe(copy, recipe)
    result = run_recipe(load_recipe(copy), show_progress=False)
    assert result.actions() == {
        **{s: "skipped" for s in ("synthesize", "filter", "weak")},
        **{s: "ran" for s in ("mine", "supervised", "merge", "evaluate")},
    }

    # a stage that reruns and writes the same bytes does not rerun what follows it
    recipe["stages"]["filter"]["min_cos"] = -0.5  # kept everything at 0.0 already
    write_recipe(copy, recipe)
    result = run_recipe(load_recipe(copy), show_progress=False)
    assert result.actions() == {**{s: "skipped" for s in STAGES}, "filter": "ran"}


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())
