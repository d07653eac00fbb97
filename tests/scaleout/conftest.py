"""Fixtures of the scale-out tests: one small local Ray instance, corpora cut from real SciFact."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "synthesis"))  # the fake LLM server


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of 2 CPUs (no dashboard) for one test module, shut down after it."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'embedforge[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def scifact_slice(shared_data_dir: Path, out: Path, n: int) -> Path:
    """The first ``n`` SciFact documents (BEIR corpus.jsonl: _id, title, text, metadata)."""
    src = shared_data_dir / "scifact" / "corpus.jsonl"
    if not src.exists():
        pytest.skip(f"SciFact is not at {src}")
    with src.open(encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    out.write_text("".join(lines), encoding="utf-8")
    assert len(out.read_text(encoding="utf-8").splitlines()) == n
    json.loads(lines[0])  # a real JSON line
    return out


@pytest.fixture()
def scifact_corpus(shared_data_dir, tmp_path):
    """``scifact_corpus(n)``: a JSONL file of the first ``n`` SciFact documents."""
    return lambda n: scifact_slice(shared_data_dir, tmp_path / f"scifact{n}.jsonl", n)


@pytest.fixture()
def scifact_200(scifact_corpus) -> Path:
    return scifact_corpus(200)
