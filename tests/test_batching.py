"""The one batching path: budgets respected, every input once, input order restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embedforge.batching import pad_left, pad_right, plan_batches, position_ids_from_mask, run_batched
from embedforge.pooling import last_token_index, last_token_pool


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 600), max_size=200), st.integers(1, 4096))
def test_plan_covers_each_input_once_within_budget(lengths, budget):
    plan = plan_batches(lengths, budget)
    flat = sorted(i for b in plan.batches for i in b)
    assert flat == list(range(len(lengths)))
    padded = 0
    for b in plan.batches:
        width = max(lengths[i] for i in b)
        padded += width * len(b)
        assert len(b) == 1 or width * len(b) <= budget
    assert plan.padded_tokens == padded and plan.real_tokens == sum(lengths)


def test_max_batch_size_and_bad_budget():
    plan = plan_batches([5] * 10, 10_000, max_batch_size=3)
    assert [len(b) for b in plan.batches] == [3, 3, 3, 1]
    with pytest.raises(ValueError, match="budget must be >= 1"):
        plan_batches([1], 0)


def test_sorted_plan_pads_less_than_input_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(16, 512, size=256).tolist()
    plan = plan_batches(lengths, 4096)
    in_order = sum(16 * max(lengths[i : i + 16]) for i in range(0, 256, 16))
    assert plan.padded_tokens < in_order and plan.padding_overhead < 0.1


def test_run_batched_restores_input_order():
    ids = [[i] * (i % 7 + 1) for i in range(50)]
    out = run_batched(
        ids, lambda b: torch.tensor([[x[0], len(x)] for x in b], dtype=torch.float32), max_tokens=20
    )
    assert out[:, 0].tolist() == list(range(50))
    assert out[:, 1].tolist() == [i % 7 + 1 for i in range(50)]


def test_padding_helpers_and_last_token():
    ids = [[1, 2, 3], [4]]
    left, lmask = pad_left(ids, 0)
    right, rmask = pad_right(ids, 0)
    assert left.tolist() == [[1, 2, 3], [0, 0, 4]] and right.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert position_ids_from_mask(lmask).tolist() == [[0, 1, 2], [0, 0, 0]]
    assert last_token_index(rmask).tolist() == [2, 0] and last_token_index(lmask).tolist() == [2, 2]
    hidden = torch.arange(6, dtype=torch.float32).reshape(1, 3, 2).expand(2, 3, 2)
    assert last_token_pool(hidden, rmask).tolist() == [[4.0, 5.0], [0.0, 1.0]]
