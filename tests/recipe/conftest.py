"""Fixtures of the recipe tests: a tiny BEIR dataset written here, a tiny Qwen3 embedder that tells
texts apart, a persona file and the fake OpenAI-compatible LLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from recipe_testdata import PERSONAS, write_beir

from synthesis.synth_fake_llm import FakeLLM  # the fake LLM of the synthesis tests (tests/ is on the path)


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory) -> Path:
    return write_beir(tmp_path_factory.mktemp("tiny-beir") / "tinyfacts")


@pytest.fixture(scope="session")
def persona_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("personas") / "personas.jsonl"
    p.write_text("".join(json.dumps({"persona": x}) + "\n" for x in PERSONAS), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def recipe_model_dir(tmp_path_factory, tiny_embedder_dir) -> Path:
    """The tiny Qwen3 embedder with its projections scaled x5, so that texts get distinct
    embeddings (as the training tests do; at the default init every text pools alike)."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("tiny-qwen3-recipe")
    shutil.copytree(tiny_embedder_dir, out, dirs_exist_ok=True)
    state = load_file(out / "model.safetensors")
    state = {k: v * 5.0 if k.endswith("proj.weight") else v for k, v in state.items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def fake_llm():
    with FakeLLM() as llm:
        yield llm
