"""Two tiny random Qwen3 embedders to merge, built once per session."""

from __future__ import annotations

import pytest

from embedforge.testing import make_random_qwen3


@pytest.fixture(scope="session")
def two_parents(tmp_path_factory, qwen3_tokenizer_dir):
    root = tmp_path_factory.mktemp("parents")
    a = make_random_qwen3(
        root / "a", qwen3_tokenizer_dir, seed=11, append_eos=True, sentence_transformers=True
    )
    b = make_random_qwen3(
        root / "b", qwen3_tokenizer_dir, seed=12, append_eos=True, sentence_transformers=True
    )
    return a, b
