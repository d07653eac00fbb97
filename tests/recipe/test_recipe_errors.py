"""Bad input fails early with a message naming the stage or key and the file; a failing stage
leaves the stages before it complete and current."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from recipe_testdata import DOCS, recipe_dict, write_recipe

from embedforge.cli import main as cli_main
from embedforge.recipe import RecipeError, load_recipe, parse_recipe, run_recipe
from synthesis.synth_fake_llm import FakeLLM, Reply


@pytest.fixture
def base(tmp_path, recipe_model_dir, tiny_beir, persona_file) -> dict:
    return recipe_dict(recipe_model_dir, tiny_beir, persona_file, "http://127.0.0.1:9/v1", tmp_path / "out")


def test_unknown_stage_names_it_the_file_and_the_stages(tmp_path, base):
    base["stages"]["distill"] = {"steps": 3}
    path = write_recipe(tmp_path / "r.yaml", base)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert (
        str(path) in msg
        and "'distill'" in msg
        and "synthesize, filter, weak, mine, supervised, merge, evaluate" in msg
    )


def test_unknown_key_names_it_the_file_and_the_allowed_keys(tmp_path, base, capsys):
    base["stages"]["weak"]["lr"] = 0.1
    base["data"]["eval_splitt"] = "dev"
    path = write_recipe(tmp_path / "r.yaml", base)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert f"{path}: unknown key 'stages.weak.lr'" in msg and "learning_rate" in msg and "max_steps" in msg
    assert "unknown key 'data.eval_splitt'" in msg and "eval_split" in msg
    assert cli_main(["recipe", "run", str(path)]) == 2
    assert "stages.weak.lr" in capsys.readouterr().err


def test_bad_values_and_missing_requirements_are_named(tmp_path, base):
    bad = json.loads(json.dumps(base))
    bad["stages"]["supervised"]["batch_size"] = 0
    with pytest.raises(RecipeError, match=r"stages\.supervised\.batch_size: Input should be greater than 0"):
        parse_recipe(bad, source=tmp_path / "r.yaml")
    bad = json.loads(json.dumps(base))
    bad["model"]["colour"] = "red"
    with pytest.raises(RecipeError, match=r"unknown model spec field\(s\) \['colour'\]"):
        parse_recipe(bad)
    bad = json.loads(json.dumps(base))
    del bad["data"]["eval"]
    with pytest.raises(RecipeError, match="stage 'evaluate' needs data.eval"):
        parse_recipe(bad)
    bad = json.loads(json.dumps(base))
    bad["stages"]["supervised"]["save_every"] = None
    with pytest.raises(RecipeError, match="stage 'merge' merges 2 supervised models"):
        parse_recipe(bad)
    bad = json.loads(json.dumps(base))
    bad["stages"]["merge"]["t"] = [0.5, 0.5]
    with pytest.raises(RecipeError, match=r"stages\.merge: slerp of 2 models takes 1 t values"):
        parse_recipe(bad)
    bad = json.loads(json.dumps(base))
    bad["stages"]["weak"]["warmup_steps"] = 9
    with pytest.raises(RecipeError, match=r"warmup_steps \(9\) exceeds max_steps \(6\)"):
        parse_recipe(bad)
    bad = json.loads(json.dumps(base))
    bad["stages"]["weak"]["loss"] = "mnrl"
    bad["stages"]["weak"]["query_query"] = True
    with pytest.raises(RecipeError, match="loss: mnrl fixes"):
        parse_recipe(bad)


def test_shorthand_off_and_relative_paths(tmp_path, tiny_beir, recipe_model_dir):
    raw = {
        "output_dir": "runs/x",
        "model": str(recipe_model_dir),
        "data": {"labeled": str(tiny_beir)},
        "stages": {"supervised": {"max_steps": 2}, "weak": False, "evaluate": {"enabled": False}},
    }
    r = parse_recipe(raw, source=tmp_path / "sub" / "r.yaml")
    assert r.output_dir == tmp_path / "sub" / "runs" / "x"
    assert [s for s in ("synthesize", "weak", "supervised", "evaluate") if r.stages.on(s)] == ["supervised"]
    assert r.stages.supervised.seed is None and r.seed_of("supervised") == 0


def test_missing_input_file_names_the_stage_and_the_file(tmp_path, base):
    base["data"]["labeled"] = str(tmp_path / "nowhere")
    base["stages"] = {"mine": {}, "supervised": {"max_steps": 2, "num_negatives": 1}}
    path = write_recipe(tmp_path / "r.yaml", base)
    with pytest.raises(RecipeError) as e:
        run_recipe(load_recipe(path), show_progress=False)
    assert "stage 'mine'" in str(e.value) and str(tmp_path / "nowhere") in str(e.value)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["error"] == str(e.value)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [("Sure! Here is the query you asked for.", "no JSON object|invalid JSON"), ("", "empty|no JSON object")],
)
def test_llm_malformed_or_empty_answers_fail_the_synthesize_stage(tmp_path, base, reply, reason):
    base["stages"] = {"synthesize": base["stages"]["synthesize"], "filter": base["stages"]["filter"]}
    base["stages"]["synthesize"]["documents"] = 3
    with FakeLLM(lambda body, n: Reply(reply)) as llm:
        base["stages"]["synthesize"]["llm"]["url"] = llm.url
        path = write_recipe(tmp_path / "r.yaml", base)
        with pytest.raises(RecipeError) as e:
            run_recipe(load_recipe(path), show_progress=False)
    msg = str(e.value)
    assert msg.startswith("stage 'synthesize' failed: 3 of 3 pairs failed") and re.search(reason, msg)
    assert ".failed.jsonl" in msg and "--resume" in msg
    state = json.loads((tmp_path / "out" / "synthesize" / "stage.json").read_text())
    assert state["state"] == "failed" and re.search(reason, state["error"])
    assert not (tmp_path / "out" / "filter").exists()

    with FakeLLM() as llm:  # the LLM is fixed: --resume asks for the failed pairs again
        base["stages"]["synthesize"]["llm"]["url"] = llm.url  # the URL is not part of the inputs
        write_recipe(path, base)
        with pytest.raises(RecipeError, match="--resume to continue it"):
            run_recipe(load_recipe(path), show_progress=False)
        result = run_recipe(load_recipe(path), resume=True, show_progress=False)
        assert llm.calls == 6  # two calls per pair, every pair asked again
    assert result.actions()["synthesize"] == "resumed" and result.actions()["filter"] == "ran"


def test_failed_stage_leaves_earlier_stages_current(tmp_path, base):
    records = tmp_path / "pairs.jsonl"
    records.write_text(
        "".join(
            json.dumps(
                {
                    "instruction": None,
                    "query": t.lower(),
                    "positive": x,
                    "negatives": [],
                    "provenance": {"doc_id": i, "sample": 0},
                }
            )
            + "\n"
            for i, t, x in DOCS
        )
    )
    base["stages"] = {
        "synthesize": {"records": str(records), "documents": 6},
        "filter": {"min_cos": -1.0, "near_dup": None},
        "weak": {"batch_size": 8, "max_steps": 2},
    }
    path = write_recipe(tmp_path / "r.yaml", base)
    with pytest.raises(
        RecipeError,
        match=r"stage 'weak' failed: 6 training records in .*train.jsonl, fewer than batch_size 8",
    ):
        run_recipe(load_recipe(path), show_progress=False)
    out = tmp_path / "out"
    assert [
        json.loads((out / s / "stage.json").read_text())["state"] for s in ("synthesize", "filter", "weak")
    ] == [
        "complete",
        "complete",
        "failed",
    ]
    base["stages"]["weak"]["batch_size"] = 3
    write_recipe(path, base)
    result = run_recipe(load_recipe(path), show_progress=False)
    assert result.actions() == {
        "synthesize": "skipped",
        "filter": "skipped",
        "weak": "ran",
        "mine": "off",
        "supervised": "off",
        "merge": "off",
        "evaluate": "off",
    }
    assert "batch_size" in next(s.why for s in result.stages if s.stage == "weak")


def test_plan_says_what_would_run(tmp_path, base, capsys):
    base["stages"] = {"synthesize": {"records": str(Path(__file__)), "documents": 2}}
    path = write_recipe(tmp_path / "r.yaml", base)
    assert cli_main(["recipe", "plan", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "synthesize: run (first run)" and out[1] == "filter: off"


def test_two_runs_never_write_one_output_dir(tmp_path, base):
    import fcntl
    import os

    base["stages"] = {"synthesize": {"records": str(Path(__file__)), "documents": 2}}
    path = write_recipe(tmp_path / "r.yaml", base)
    (tmp_path / "out").mkdir()
    fd = os.open(tmp_path / "out" / ".recipe.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds it
    try:
        with pytest.raises(RecipeError, match="another recipe run is writing"):
            run_recipe(load_recipe(path), show_progress=False)
    finally:
        os.close(fd)


def test_two_endpoints_and_constrained_decoding_reach_the_llm(tmp_path, base):
    """``url`` may list several endpoints (requests spread over them) and ``response_format`` sends
    each answer's JSON schema: a model that chatters unless constrained then answers every pair."""
    from synthesis.synth_fake_llm import constrained_reply

    base["stages"] = {"synthesize": base["stages"]["synthesize"]}
    base["stages"]["synthesize"]["documents"] = 4
    with FakeLLM(constrained_reply) as a, FakeLLM(constrained_reply) as b:
        base["stages"]["synthesize"]["llm"].update(url=[a.url, b.url], response_format="json_schema")
        path = write_recipe(tmp_path / "r.yaml", base)
        result = run_recipe(load_recipe(path), show_progress=False)
    assert result.actions()["synthesize"] == "ran"
    assert next(s for s in result.stages if s.stage == "synthesize").record.summary["pairs"] == 4
    assert a.calls + b.calls == 8 and a.calls > 0 and b.calls > 0
    assert all(body["response_format"]["type"] == "json_schema" for body in a.bodies + b.bodies)
    assert not a.schema_violations and not b.schema_violations
