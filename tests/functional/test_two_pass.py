import math

import pytest
import torch

from softmaxkit import two_pass_log_softmax, two_pass_softmax
from tests.helpers import HALF_DTYPES, assert_matches, grad_of, np64
from tests.reference import maps_ref as ref

gen = torch.Generator().manual_seed(1)
MAPS = [(two_pass_softmax, torch.softmax), (two_pass_log_softmax, torch.log_softmax)]


@pytest.mark.parametrize("ours, theirs", MAPS)
@pytest.mark.parametrize(
    "shape, dim, chunk",
    [
        ((1000,), 0, 64),
        ((3, 1000), 1, 100),
        ((3, 1024), 1, 256),
        ((5, 301, 2), 1, 50),
        ((4, 7), 1, 100),
    ],
)
def test_matches_reference_for_every_chunking(ours, theirs, shape, dim, chunk):
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 5
    expected = ref.softmax(np64(x.movedim(dim, -1)))
    expected = torch.from_numpy(expected).movedim(-1, dim).numpy()
    if ours is two_pass_log_softmax:
        expected = torch.from_numpy(expected).log().numpy()
    assert_matches(ours(x, dim, chunk_size=chunk), expected, atol=1e-12)
    torch.testing.assert_close(
        grad_of(lambda t: ours(t, dim, chunk_size=chunk), x), grad_of(lambda t: theirs(t, dim), x)
    )


@pytest.mark.parametrize("ours, theirs", MAPS)
def test_gradcheck(ours, theirs):
    x = torch.randn(2, 37, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ours(t, chunk_size=8), (x,))


@pytest.mark.parametrize("ours, theirs", MAPS)
def test_large_inputs_do_not_overflow(ours, theirs):
    x = torch.empty(50_000).uniform_(-1000, 1000, generator=gen)
    y = ours(x, chunk_size=1000)
    torch.testing.assert_close(y, theirs(x.double(), 0).float(), rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("ours, theirs", MAPS)
def test_neg_inf_chunks_and_rows(ours, theirs):
    x = torch.randn(3, 300, generator=gen, dtype=torch.float64)
    x[0] = -math.inf  # a dead row
    x[1, :130] = -math.inf  # two whole dead chunks and part of a third
    y = ours(x, chunk_size=64)
    fill = 0.0 if ours is two_pass_softmax else -math.inf
    assert (y[0] == fill).all() and (y[1, :130] == fill).all()
    torch.testing.assert_close(y[1, 130:], theirs(x[1, 130:], 0))
    torch.testing.assert_close(y[2], theirs(x[2], 0))
    g = grad_of(lambda t: ours(t, chunk_size=64).nan_to_num(neginf=0.0), x)
    assert not g.isnan().any() and (g[0] == 0).all() and (g[1, :130] == 0).all()


def test_nan_propagates():
    x = torch.randn(1000, generator=gen)
    x[500] = math.nan
    assert two_pass_softmax(x, chunk_size=100).isnan().all()


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("ours, theirs", MAPS)
def test_half_dtypes(ours, theirs, dtype):
    x = torch.randn(4000, generator=gen).to(dtype)
    y = ours(x, chunk_size=512)
    assert y.dtype == dtype
    torch.testing.assert_close(y, theirs(x.float(), 0).to(dtype))


def test_default_chunking_depends_on_row_count():
    one_row = torch.randn(1, 50_000, generator=gen)
    torch.testing.assert_close(two_pass_softmax(one_row), torch.softmax(one_row, -1))
    many = torch.randn(64, 100, generator=gen)
    torch.testing.assert_close(two_pass_softmax(many), torch.softmax(many, -1))
    assert two_pass_softmax(torch.randn(0, 3)).shape == (0, 3)
    assert two_pass_softmax(torch.tensor(2.0)).item() == 1.0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"chunk_size": 0}, ValueError, r"chunk_size must be in \[1, inf\]"),
        ({"chunk_size": 2.5}, TypeError, "chunk_size must be an int"),
        ({"dim": 1}, ValueError, "dim must be in"),
    ],
)
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        two_pass_softmax(torch.randn(10), **kwargs)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        two_pass_log_softmax(torch.arange(4))
