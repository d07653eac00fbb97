"""Fixtures of the evaluation tests: real models loaded once, real data folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedforge import Embedder, Reranker


@pytest.fixture(scope="session")
def minilm(minilm_dir) -> Embedder:
    return Embedder.from_pretrained(minilm_dir)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_embedder_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_embedder_dir, max_length=128)


@pytest.fixture(scope="session")
def tiny_reranker(tiny_reranker_dir) -> Reranker:
    return Reranker.from_pretrained(tiny_reranker_dir, max_length=256)


@pytest.fixture(scope="session")
def scifact_dir(shared_data_dir) -> Path:
    return shared_data_dir / "scifact"


@pytest.fixture(scope="session")
def stsb_dir(shared_data_dir) -> Path:
    return shared_data_dir / "stsb-multi-mt" / "data"
