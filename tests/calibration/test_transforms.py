import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.calibration.correctness import correctness_aware_loss
from softmaxkit.calibration.transforms import POSSIBILITY_METHODS, probability_to_possibility
from tests.helpers import HALF_DTYPES, np64
from tests.reference import transforms_ref as ref

REFS = {
    "antipignistic": ref.antipignistic,
    "minimum_specificity": ref.minimum_specificity,
    "max": ref.max_normalised,
}


def random_probs(n, c, seed, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(n, c, generator=g, dtype=dtype), dim=-1)


@pytest.mark.parametrize("method", POSSIBILITY_METHODS)
def test_matches_reference(method):
    p = random_probs(7, 9, 0)
    p[1] = torch.tensor([0.4, 0.2, 0.2, 0.1, 0.05, 0.05, 0.0, 0.0, 0.0], dtype=torch.float64)
    out = probability_to_possibility(p, method=method)
    np.testing.assert_allclose(np64(out), ref.rows(REFS[method], np64(p)), rtol=1e-12, atol=1e-15)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(POSSIBILITY_METHODS),
    data=st.data(),
)
def test_any_axis_matches_reference(shape, seed, method, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    g = torch.Generator().manual_seed(seed)
    # coarse values make ties common
    p = torch.softmax(torch.randint(-2, 3, shape, generator=g).to(torch.float64), dim=dim)
    out = probability_to_possibility(p, method=method, dim=dim)
    assert out.shape == p.shape and out.dtype == p.dtype
    moved = np64(p.movedim(dim, -1)).reshape(-1, p.shape[dim])
    expected = ref.rows(REFS[method], moved)
    np.testing.assert_allclose(
        np64(out.movedim(dim, -1)).reshape(-1, p.shape[dim]), expected, rtol=1e-12, atol=1e-15
    )


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5),
    c=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    coarse=st.booleans(),
    method=st.sampled_from(POSSIBILITY_METHODS),
)
def test_possibility_properties(n, c, seed, coarse, method):
    g = torch.Generator().manual_seed(seed)
    z = (
        torch.randint(-2, 3, (n, c), generator=g).double()
        if coarse
        else torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    )
    p = torch.softmax(z, dim=-1)
    pi = probability_to_possibility(p, method=method)
    # normalised: max is 1; consistent: pi >= p; bounded by 1
    torch.testing.assert_close(pi.amax(-1), torch.ones(n, dtype=torch.float64))
    assert (pi >= p - 1e-15).all() and (pi <= 1 + 1e-12).all()
    # order preserved, and equal probabilities get equal possibilities
    bigger = p.unsqueeze(-1) > p.unsqueeze(-2)
    same = p.unsqueeze(-1) == p.unsqueeze(-2)
    diff = pi.unsqueeze(-1) - pi.unsqueeze(-2)
    assert (diff[bigger] >= -1e-15).all()
    assert (diff[same].abs() <= 1e-15).all()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4), c=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_antipignistic_is_least_specific_of_the_two(n, c, seed):
    p = random_probs(n, c, seed)
    anti = probability_to_possibility(p)
    spec = probability_to_possibility(p, method="minimum_specificity")
    assert (anti >= spec - 1e-15).all()


@settings(max_examples=30, deadline=None)
@given(c=st.integers(1, 10), seed=st.integers(0, 2**16), coarse=st.booleans())
def test_pignistic_of_antipignistic_gives_back_p(c, seed, coarse):
    # the antipignistic transform inverts the pignistic one (Dubois & Prade)
    g = torch.Generator().manual_seed(seed)
    z = (
        torch.randint(-2, 3, (c,), generator=g).double()
        if coarse
        else torch.randn(c, generator=g, dtype=torch.float64)
    )
    p = torch.softmax(z, dim=-1)
    pi = probability_to_possibility(p)
    np.testing.assert_allclose(ref.pignistic(np64(pi)), np64(p), rtol=1e-10, atol=1e-15)


def test_official_minimum_specificity_and_ties():
    # without ties the official loop and this function agree
    p = torch.tensor([0.1, 0.45, 0.3, 0.15], dtype=torch.float64)
    out = probability_to_possibility(p, method="minimum_specificity")
    np.testing.assert_allclose(np64(out), ref.official_minimum_specificity(np64(p)), rtol=1e-12)
    # with ties the official loop depends on the sort order; here equal p give equal pi
    tied = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    ours = probability_to_possibility(tied, method="minimum_specificity")
    official = ref.official_minimum_specificity(np64(tied))
    np.testing.assert_allclose(official, [1.0, 0.5, 0.25])
    np.testing.assert_allclose(np64(ours), [1.0, 0.5, 0.5])
    # the antipignistic transform is tie-consistent in the official code too
    np.testing.assert_allclose(np64(probability_to_possibility(tied)), [1.0, 0.75, 0.75])


@pytest.mark.parametrize("method", POSSIBILITY_METHODS)
def test_gradcheck(method):
    p = torch.tensor(
        [[0.05, 0.5, 0.3, 0.15], [0.4, 0.1, 0.2, 0.3]], dtype=torch.float64, requires_grad=True
    )
    assert torch.autograd.gradcheck(lambda t: probability_to_possibility(t, method=method), (p,))
    assert torch.autograd.gradgradcheck(
        lambda t: probability_to_possibility(t, method=method), (p,)
    )


@pytest.mark.parametrize("method", POSSIBILITY_METHODS)
def test_zero_row(method):
    p = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64, requires_grad=True)
    out = probability_to_possibility(p, method=method)
    cot = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    (g,) = torch.autograd.grad(out, p, cot)
    assert (out[0] == 0).all() and torch.isfinite(g).all()
    if method == "max":  # 0 / 0: no derivative, the row gets none
        assert (g[0] == 0).all()
    # the sum-based maps are continuous at 0 but not differentiable (every entry is
    # tied): any finite subgradient is acceptable there


@pytest.mark.parametrize("dtype", HALF_DTYPES + (torch.float32,))
@pytest.mark.parametrize("method", POSSIBILITY_METHODS)
def test_low_precision(dtype, method):
    p64 = random_probs(16, 11, 3)
    low = p64.to(dtype)
    out = probability_to_possibility(low, method=method)
    assert out.dtype == dtype
    # no worse than rounding the float64 answer on the low-precision input to the dtype
    exact = probability_to_possibility(low.double(), method=method)
    tol = torch.finfo(dtype).eps
    assert (out.double() - exact).abs().max() <= 2 * tol


@pytest.mark.parametrize("method", POSSIBILITY_METHODS)
def test_extreme_and_empty_inputs(method):
    # softmax of +-1e4 logits: exact zeros and ones
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=torch.float64)
    p = torch.softmax(z, dim=-1)
    out = probability_to_possibility(p, method=method)
    expected = {
        "antipignistic": [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
        "minimum_specificity": [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
        "max": [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
    }[method]
    np.testing.assert_allclose(np64(out), expected, atol=1e-15)
    for shape in [(0, 4), (3, 0), (0,)]:
        e = torch.empty(shape, dtype=torch.float32)
        assert probability_to_possibility(e, method=method).shape == shape
    one = probability_to_possibility(torch.tensor([1.0]), method=method)
    assert one.tolist() == [1.0]


def test_errors():
    p = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match=r"probs must have all values in \[0, 1\], got nan"):
        probability_to_possibility(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match=r"probs must have all values in \[0, 1\], got inf"):
        probability_to_possibility(torch.tensor([0.5, float("inf")]))
    with pytest.raises(ValueError, match=r"probs must have all values in \[0, 1\], got -0.1"):
        probability_to_possibility(torch.tensor([0.9, -0.1]))
    with pytest.raises(ValueError, match=r"probs must have all values in \[0, 1\], got 1.5"):
        probability_to_possibility(torch.tensor([[0.5, 0.5], [1.5, 0.0]]))
    with pytest.raises(TypeError, match="probs must be a floating-point tensor"):
        probability_to_possibility(torch.tensor([1, 0]))
    with pytest.raises(TypeError, match="probs must be a torch.Tensor"):
        probability_to_possibility([0.5, 0.5])
    with pytest.raises(ValueError, match="method must be one of 'antipignistic'"):
        probability_to_possibility(p, method="dubois")
    with pytest.raises(ValueError, match="dim must be in"):
        probability_to_possibility(p, dim=1)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        probability_to_possibility(torch.tensor(1.0))


def compiled_pair(p, logits, target):
    total = correctness_aware_loss(logits, target)
    for method in POSSIBILITY_METHODS:
        total = total + probability_to_possibility(p, method=method).sum()
    return total


def test_runs_under_torch_compile():
    p = random_probs(3, 6, 5, dtype=torch.float32).requires_grad_()
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0])
    out = torch.compile(compiled_pair, fullgraph=True)(p, logits, target)
    gp, gl = torch.autograd.grad(out, (p, logits))
    eager = compiled_pair(p, logits, target)
    ep, el = torch.autograd.grad(eager, (p, logits))
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(gp, ep)
    torch.testing.assert_close(gl, el)
