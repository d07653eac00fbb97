"""Backend tests load ``backend="torch-int8"`` through ``from_pretrained``.

Until the lead registers the backend in ``embedforge.runtime.BACKENDS`` and
``embedforge.spec.BACKENDS`` (together with the two tests that pin those tuples), this fixture
registers it for these tests only; once registered it changes nothing.
"""

from __future__ import annotations

import pytest

import embedforge.runtime


@pytest.fixture(autouse=True)
def _torch_int8_registered(monkeypatch):
    if "torch-int8" not in embedforge.runtime.BACKENDS:
        monkeypatch.setattr(embedforge.runtime, "BACKENDS", (*embedforge.runtime.BACKENDS, "torch-int8"))
