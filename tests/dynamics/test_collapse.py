"""Softmax Collapse metric (Prieto et al. 2025): reference, precision, edge cases, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.dynamics import softmax_collapse, softmax_collapse_fraction
from softmaxkit.dynamics.collapse import SoftmaxCollapse
from tests.reference import collapse_ref as ref

PRECISIONS = {
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
    torch.float32: "float32",
    torch.float64: "float64",
}


def _logits(rows: int, classes: int, scale: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, classes, generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("dtype", list(PRECISIONS))
@pytest.mark.parametrize("classes", [2, 5, 113])
def test_matches_reference(dtype, classes):
    x = _logits(400, classes, scale=12.0 if dtype in (torch.float16, torch.bfloat16) else 25.0)
    if dtype == torch.float64:
        x = x * 2.5
    x = x.to(dtype)  # the logits as the softmax of that precision sees them
    expected = ref.collapsed(x.double().numpy(), PRECISIONS[dtype])
    decided = np.array([e is not None for e in expected])
    want = np.array([bool(e) for e in expected])
    got = softmax_collapse(x, dtype=dtype).collapsed.numpy()
    assert decided.sum() > 300
    assert 0 < want[decided].sum() < decided.sum()  # both outcomes occur
    np.testing.assert_array_equal(got[decided], want[decided])
    frac = softmax_collapse_fraction(x, dtype=dtype)
    assert frac.dtype == torch.float32 and frac.shape == ()
    assert frac.item() == pytest.approx(got.mean())


def test_paper_eq4_collapsed_rows_get_zero_loss_and_zero_correct_class_gradient():
    """Eqs. 3-4: under SC the float32 CE and its gradient for the correct class are 0."""
    x = torch.tensor([[30.0, 0.0, -5.0], [10.0, 0.0, -5.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    loss = F.cross_entropy(x, y, reduction="none")
    loss.sum().backward()
    assert softmax_collapse(x, y).collapsed.tolist() == [True, False]
    assert loss[0].item() == 0.0 and loss[1].item() > 0.0
    assert x.grad[0, 0].item() == 0.0 and x.grad[1, 0].item() != 0.0


@pytest.mark.parametrize("value", [0.0, 30.0, 1e4])
@pytest.mark.parametrize("dtype", list(PRECISIONS))
def test_ties_never_collapse(value, dtype):
    x = torch.tensor([[value, value, -1e4], [value, -1e4, value]], dtype=dtype)
    assert not softmax_collapse(x, dtype=dtype).collapsed.any()


def _first_collapsing_gap(dtype: torch.dtype, competitors: int = 1) -> float:
    gaps = torch.arange(0, 4000, dtype=torch.float64) / 100  # 0.00, 0.01, ..., 39.99
    x = torch.zeros(len(gaps), 1 + competitors, dtype=torch.float64)
    x[:, 0] = gaps
    collapsed = softmax_collapse(x.to(dtype), dtype=dtype).collapsed
    assert collapsed.any()
    first = int(collapsed.nonzero()[0])
    assert collapsed[first:].all()  # monotone in the gap
    return gaps[first].item()


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(torch.bfloat16, 5.5), (torch.float16, 7.6), (torch.float32, 16.6), (torch.float64, 36.7)],
)
def test_gap_rule_of_thumb_one_competitor(dtype, expected):
    first = _first_collapsing_gap(dtype)
    assert first == pytest.approx(expected, abs=0.15)
    assert first == pytest.approx(ref.gap_threshold(PRECISIONS[dtype]), abs=0.15)


def test_float32_gap_boundaries():
    x = torch.tensor([[15.0, 0.0], [16.0, 0.0], [16.7, 0.0], [20.0, 0.0]])
    assert softmax_collapse(x).collapsed.tolist() == [False, False, True, True]


def test_many_competitors_need_a_larger_gap():
    """112 competitors at the same gap add up: up to ln(112) = 4.7 more is needed.

    How much more depends on how torch.sum groups the additions (documented)."""
    first = _first_collapsing_gap(torch.float32, competitors=112)
    assert 16.6 + 0.5 < first < 16.6 + math.log(112) + 0.1
    row = torch.zeros(1, 113)
    row[0, 0] = 18.0
    assert not softmax_collapse(row).collapsed.item()
    assert softmax_collapse(row[:, :2]).collapsed.item()


def test_dtype_changes_the_verdict():
    x = torch.tensor([[10.0, 0.0], [20.0, 0.0], [40.0, 0.0]])
    got = {d: softmax_collapse(x, dtype=d).collapsed.tolist() for d in PRECISIONS}
    assert got[torch.bfloat16] == [True, True, True]
    assert got[torch.float16] == [True, True, True]
    assert got[torch.float32] == [False, True, True]
    assert got[torch.float64] == [False, False, True]
    assert softmax_collapse_fraction(x, dtype=torch.float64).item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,), (2, 0, 4)])
def test_empty_input_gives_zero_not_nan(shape):
    x = torch.empty(shape)
    frac = softmax_collapse_fraction(x)
    assert frac.item() == 0.0
    r = softmax_collapse(x)
    assert r.fraction.item() == 0.0
    assert r.collapsed.shape == shape[:-1] and not r.collapsed.any()
    target = torch.zeros(shape[:-1], dtype=torch.long)
    if shape[-1] == 0:
        target = torch.empty(shape[:-1], dtype=torch.long).fill_(-100)
    assert softmax_collapse(x, target).zero_loss_fraction.item() == 0.0


def test_minus_inf_entries_are_masked_and_full_minus_inf_rows_do_not_count():
    inf = float("inf")
    x = torch.tensor([[-inf, 20.0, 0.0], [-inf, 10.0, 0.0], [-inf, -inf, -inf], [-inf, 5.0, -inf]])
    r = softmax_collapse(x)
    assert r.collapsed.tolist() == [True, False, False, True]  # one live class: S == 1
    assert r.fraction.item() == pytest.approx(0.5)
    sliced = softmax_collapse(x[:2, 1:]).collapsed
    assert sliced.tolist() == r.collapsed[:2].tolist()


def test_nan_and_plus_inf_rows_do_not_count():
    x = torch.tensor([[float("nan"), 20.0, 0.0], [float("inf"), 0.0, 0.0], [20.0, 0.0, 0.0]])
    assert softmax_collapse(x).collapsed.tolist() == [False, False, True]


def test_single_class_rows_always_collapse():
    assert softmax_collapse_fraction(torch.randn(4, 1)).item() == 1.0
    assert softmax_collapse_fraction(torch.tensor([3.0])).item() == 1.0


def test_any_shape_and_dim():
    x = _logits(30, 7, 20.0, seed=3).float().reshape(2, 5, 3, 7)  # classes last
    expected = softmax_collapse(x).collapsed
    for dim in (1, 2, -3):
        moved = x.movedim(-1, dim)
        r = softmax_collapse(moved, dim=dim)
        assert r.collapsed.shape == (2, 5, 3)
        assert torch.equal(r.collapsed, expected)
        assert softmax_collapse_fraction(moved, dim=dim) == softmax_collapse_fraction(x)
    flat = softmax_collapse(torch.tensor([0.0, 20.0]))
    assert flat.collapsed.shape == () and flat.collapsed.item()


def test_zero_loss_fraction_matches_reference():
    x = (_logits(300, 11, 18.0, seed=5)).float()
    y = torch.randint(0, 11, (300,), generator=torch.Generator().manual_seed(1))
    y[:150] = x[:150].argmax(-1)  # half the rows classified correctly
    rows = x.double().tolist()
    expected = [ref.zero_loss_row(r, int(t)) for r, t in zip(rows, y)]
    decided = [e is not None for e in expected]
    r = softmax_collapse(x, y)
    per_row = F.cross_entropy(x, y, reduction="none") == 0
    got = [bool(v) for v, d in zip(per_row, decided) if d]
    assert got == [bool(e) for e in expected if e is not None]
    assert r.zero_loss_fraction.item() == pytest.approx(per_row.float().mean().item())
    assert 0 < r.zero_loss_fraction.item() < 1


def test_zero_loss_fraction_dtype_and_custom_loss():
    x = torch.tensor([[20.0, 0.0], [40.0, 0.0], [0.0, 40.0]])
    y = torch.tensor([0, 0, 0])
    assert softmax_collapse(x, y).zero_loss_fraction.item() == pytest.approx(2 / 3)
    r64 = softmax_collapse(x, y, dtype=torch.float64)
    assert r64.zero_loss_fraction.item() == pytest.approx(1 / 3)

    def loss64(logits, target, reduction="mean"):
        return F.cross_entropy(logits.double(), target, reduction=reduction)

    custom = softmax_collapse(x, y, loss_fn=loss64)
    assert custom.zero_loss_fraction.item() == pytest.approx(1 / 3)
    assert custom.fraction.item() == 1.0  # SC itself is still measured in float32

    def loss_column(logits, target, reduction="mean"):  # the official StableMax "none" shape
        return loss64(logits, target, reduction).unsqueeze(1)

    assert softmax_collapse(x, y, loss_fn=loss_column).zero_loss_fraction.item() == pytest.approx(
        1 / 3
    )


def test_zero_loss_fraction_ignore_index_and_probability_targets():
    x = torch.tensor([[20.0, 0.0], [10.0, 0.0], [30.0, 0.0]])
    y = torch.tensor([0, 0, -100])
    assert softmax_collapse(x, y).zero_loss_fraction.item() == pytest.approx(1 / 2)
    probs = F.one_hot(torch.tensor([0, 0, 0]), 2).float()
    assert softmax_collapse(x, probs).zero_loss_fraction.item() == pytest.approx(2 / 3)
    x3 = x.T.unsqueeze(0)  # (1, C, N), classes on dim 1
    r = softmax_collapse(x3, y.unsqueeze(0), dim=1)
    assert r.zero_loss_fraction.item() == pytest.approx(1 / 2)
    assert r.collapsed.tolist() == [[True, False, True]]


def test_result_type_no_target_and_no_grad():
    x = torch.tensor([[20.0, 0.0]], requires_grad=True)
    r = softmax_collapse(x)
    assert isinstance(r, SoftmaxCollapse)
    assert r.zero_loss_fraction is None
    assert r.fraction.grad_fn is None and r.collapsed.dtype == torch.bool
    with pytest.raises(AttributeError):
        r.fraction = torch.tensor(0.0)  # immutable


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 12),
    classes=st.integers(1, 9),
    scale=st.sampled_from([0.1, 5.0, 20.0, 60.0]),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from(list(PRECISIONS)),
)
def test_property_bounds_ties_and_consistency(rows, classes, scale, seed, dtype):
    x = _logits(rows, classes, scale, seed).to(dtype)
    r = softmax_collapse(x, dtype=dtype)
    assert 0.0 <= r.fraction.item() <= 1.0
    if rows:
        assert r.fraction.item() == pytest.approx(r.collapsed.float().mean().item())
    top = x.amax(-1, keepdim=True)
    tied = (x == top).sum(-1) > 1
    assert not r.collapsed[tied].any()
    assert torch.equal(r.collapsed, softmax_collapse(x.double(), dtype=dtype).collapsed) or (
        dtype == torch.float64
    )


def test_runs_under_torch_compile():
    x = _logits(64, 13, 20.0, seed=9).float()
    compiled = torch.compile(softmax_collapse_fraction)
    assert compiled(x) == softmax_collapse_fraction(x)


def test_errors_name_the_argument():
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        softmax_collapse_fraction([[1.0, 2.0]])
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        softmax_collapse_fraction(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="logits must have at least 1 dimension"):
        softmax_collapse_fraction(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"dim must be in \[-2, 1\].*got 2"):
        softmax_collapse_fraction(x, dim=2)
    with pytest.raises(TypeError, match="dim must be an int"):
        softmax_collapse(x, dim=1.0)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype, got 'float32'"):
        softmax_collapse_fraction(x, dtype="float32")
    with pytest.raises(ValueError, match="dtype must be one of .*got torch.int32"):
        softmax_collapse(x, dtype=torch.int32)
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        softmax_collapse(x, [0, 1, 2])
    with pytest.raises(ValueError, match=r"target must have shape \(3,\)"):
        softmax_collapse(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 3\]"):
        softmax_collapse(x, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match=r"target must have the logits' shape \(3, 4\)"):
        softmax_collapse(x, torch.zeros(3, 3))
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        softmax_collapse(x, torch.zeros(3, dtype=torch.long), loss_fn="ce")
    with pytest.raises(ValueError, match="loss_fn.*must return one loss per row"):
        softmax_collapse(
            x, torch.zeros(3, dtype=torch.long), loss_fn=lambda z, t, reduction: z.sum()
        )


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
def test_integer_targets_of_every_dtype(dtype):
    """int32 targets (torch.from_numpy of an int32 array) crashed the default loss."""
    x = _logits(16, 5, 20.0, seed=3)
    target = x.argmax(-1)
    target[::3] = 1
    expected = softmax_collapse(x, target)
    got = softmax_collapse(x, target.to(dtype))
    assert torch.equal(got.zero_loss_fraction, expected.zero_loss_fraction)
    assert torch.equal(got.collapsed, expected.collapsed)


def test_float_or_bool_class_indices_are_a_type_error():
    """A floating target of the class-index shape is class indices of the wrong dtype (a
    probability target has the logits' shape)."""
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match=r"target must hold class indices \(an integer dtype\)"):
        softmax_collapse(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="target must hold class indices"):
        softmax_collapse(x, torch.tensor([True, False, True]))


def test_probability_target_with_a_masked_class():
    """0 * log p = 0 on a masked (-inf) class of probability 0: a collapsed, correct row
    with a masked class has loss exactly 0, as with the class-index target (and as the
    docstring says -inf entries contribute nothing); F.cross_entropy gave NaN there."""
    x = torch.tensor([[40.0, 0.0, -math.inf], [40.0, 0.0, 1.0], [1.0, 0.0, -math.inf]])
    index = torch.tensor([0, 0, 0])
    probs = F.one_hot(index, 3).double()
    by_index = softmax_collapse(x, index)
    by_probs = softmax_collapse(x, probs)
    assert by_probs.zero_loss_fraction.item() == pytest.approx(2 / 3)
    assert torch.equal(by_probs.zero_loss_fraction, by_index.zero_loss_fraction)
    # a soft target that puts mass on a masked class has an infinite loss, not a NaN one
    soft = torch.tensor([[0.5, 0.0, 0.5], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    lost = softmax_collapse(x, soft, dtype=torch.float64)
    assert lost.zero_loss_fraction.item() == pytest.approx(1 / 3)
