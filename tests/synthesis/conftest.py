"""Fixtures of the synthesis tests: the tiny embedder loaded once, a small corpus, a persona file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synth_testdata import DOCS, PERSONAS


@pytest.fixture(scope="session")
def tiny_embedder(tiny_embedder_dir):
    from embedforge import Embedder

    return Embedder.from_pretrained(tiny_embedder_dir)


@pytest.fixture()
def persona_file(tmp_path) -> Path:
    p = tmp_path / "personas.jsonl"
    p.write_text("".join(json.dumps({"persona": x}) + "\n" for x in PERSONAS), encoding="utf-8")
    return p


@pytest.fixture()
def corpus_file(tmp_path) -> Path:
    p = tmp_path / "corpus.jsonl"
    p.write_text(
        "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in DOCS), encoding="utf-8"
    )
    return p
