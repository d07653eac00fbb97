"""Fixtures of the index tests: tiny random models loaded once, small generated corpora on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from index_testdata import make_docs, write_jsonl

from embedforge import Embedder, Reranker


@pytest.fixture(scope="session")
def tiny_embedder(tiny_embedder_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_embedder_dir, max_length=64)


@pytest.fixture(scope="session")
def tiny_reranker(tiny_reranker_dir) -> Reranker:
    return Reranker.from_pretrained(tiny_reranker_dir, max_length=128)


@pytest.fixture(scope="session")
def docs() -> list[dict]:
    return make_docs(300)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, docs) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", docs)


@pytest.fixture(scope="session")
def built(tmp_path_factory, corpus_file, tiny_embedder) -> Path:
    """A finished index of ``corpus_file`` (tests that change an index copy it first)."""
    from embedforge.index import Index

    out = tmp_path_factory.mktemp("built") / "ix"
    Index.build(corpus_file, out, tiny_embedder, batch_size=64, show_progress=False)
    return out
