"""slerp identities and the merge rules, on plain tensors and state dicts."""

from __future__ import annotations

import math

import pytest
import torch

from embedforge.merging import lerp, merge_state_dicts, merge_tensors, slerp


def test_endpoints():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    # very close to the ends, the formula (not the shortcut) gives the same
    torch.testing.assert_close(slerp(a, b, 1e-9), a, atol=1e-6, rtol=0)
    torch.testing.assert_close(slerp(a, b, 1 - 1e-9), b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("t", [0.1, 0.3, 0.5, 0.9])
def test_symmetric(t):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    torch.testing.assert_close(slerp(a, b, t), slerp(b, a, 1 - t))


@pytest.mark.parametrize("t", [0.25, 0.5, 0.8])
def test_orthogonal_inputs_keep_their_norm(t):
    a = torch.tensor([3.0, 0.0, 0.0])
    b = torch.tensor([0.0, 3.0, 0.0])
    out = slerp(a, b, t)
    assert out.norm().item() == pytest.approx(3.0, rel=1e-6)
    # the angle to a is t * 90 degrees
    angle = math.degrees(math.acos((out @ a).item() / (out.norm() * a.norm()).item()))
    assert angle == pytest.approx(90 * t, abs=1e-4)
    # linear interpolation shrinks the norm instead
    assert lerp(a, b, t).norm().item() == pytest.approx(3.0 * math.sqrt((1 - t) ** 2 + t**2), rel=1e-6)


def test_parallel_and_zero_fall_back_to_linear():
    a = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)
    torch.testing.assert_close(slerp(torch.zeros(3), a, 0.25), 0.25 * a)


def test_dtype_is_kept_and_bad_input_is_named():
    a = torch.randn(4, dtype=torch.bfloat16)
    b = torch.randn(4, dtype=torch.bfloat16)
    assert slerp(a, b, 0.5).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="shapes"):
        slerp(torch.zeros(2), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\], got 1.5"):
        slerp(a, b, 1.5)
    with pytest.raises(ValueError, match="non-floating"):
        slerp(torch.tensor([1, 2]), torch.tensor([1, 3]), 0.5)


def test_n_way_fold_order_and_linear():
    g = torch.Generator().manual_seed(2)
    a, b, c = (torch.randn(10, generator=g) for _ in range(3))
    expected = slerp(slerp(a, b, 0.5), c, 1 / 3)
    torch.testing.assert_close(merge_tensors([a, b, c], "slerp"), expected)
    torch.testing.assert_close(
        merge_tensors([a, b, c], "slerp", t=[0.2, 0.7]), slerp(slerp(a, b, 0.2), c, 0.7)
    )
    torch.testing.assert_close(merge_tensors([a, b, c], "linear", weights=[1, 1, 2]), (a + b + 2 * c) / 4)
    with pytest.raises(ValueError, match="needs 2 t values"):
        merge_tensors([a, b, c], "slerp", t=[0.5])
    with pytest.raises(ValueError, match="'cubic' is not a valid MergeMethod"):
        merge_tensors([a, b], "cubic")


def test_state_dicts_are_checked():
    x = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
    y = {"w": torch.ones(2, 2), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match="tensor 'b'"):
        merge_state_dicts([x, y], "slerp")
    with pytest.raises(ValueError, match="missing"):
        merge_state_dicts([x, {"w": torch.ones(2, 2)}], "slerp")
    z = {"w": torch.ones(2, 2, dtype=torch.float64), "b": torch.zeros(2)}
    with pytest.raises(ValueError, match="float64"):
        merge_state_dicts([x, z], "linear")
