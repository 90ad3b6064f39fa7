"""CosineHead: the normalized-softmax logits (Zhai & Wu 2019), paired with
losses.normalized_softmax_loss, with a fixed or a learned (exp-parameterised) temperature."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from softmaxkit.heads import CosineHead
from softmaxkit.losses import normalized_softmax_loss
from tests.reference import equiangular_ref as ref


def make(**kw):
    torch.manual_seed(0)
    return CosineHead(5, 4, **{"temperature": 0.05, **kw})


@pytest.mark.parametrize("learn", [False, True])
def test_matches_reference_and_loss(learn):
    h = make(learn_temperature=learn)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 0, 1])
    expected = ref.cosine_logits(x, h.weight.detach(), 0.05)
    torch.testing.assert_close(
        h(x).detach().double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-5
    )
    ce = F.cross_entropy(h(x), y)
    assert abs(float(ce) - ref.cross_entropy(expected, y)) < 1e-4
    loss = normalized_softmax_loss(x, h.weight, y, temperature=float(h.temperature))
    torch.testing.assert_close(ce, loss)


def test_learned_temperature_is_positive_and_trained():
    h = make(learn_temperature=True)
    assert isinstance(h.log_temperature, torch.nn.Parameter)
    assert float(h.log_temperature) == pytest.approx(math.log(0.05))
    F.cross_entropy(h(torch.randn(3, 5)), torch.tensor([0, 1, 2])).backward()
    assert h.log_temperature.grad is not None
    with torch.no_grad():
        h.log_temperature.fill_(-50.0)
    assert float(h.temperature) > 0
    assert "log_temperature" not in dict(make().named_parameters())


def test_gradcheck_empty_half_compile_state_dict():
    for learn in (False, True):
        h = make(learn_temperature=learn).double()
        x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(h, (x,))
    assert make()(torch.randn(0, 5)).shape == (0, 4)
    for dt in (torch.float16, torch.bfloat16):
        out = make().to(dt)(torch.randn(3, 5).to(dt))
        assert torch.isfinite(out).all()
    h, x = make(learn_temperature=True), torch.randn(4, 5)
    torch.testing.assert_close(torch.compile(h)(x), h(x))
    other = CosineHead(5, 4, temperature=1.0, learn_temperature=True)
    other.load_state_dict(h.state_dict())
    torch.testing.assert_close(other(x), h(x))


def test_zero_vector_is_finite():
    out = make()(torch.zeros(2, 5))
    assert torch.equal(out, torch.zeros(2, 4))


def test_errors():
    with pytest.raises(ValueError, match="temperature"):
        CosineHead(5, 4, temperature=0.0)
    with pytest.raises(TypeError, match="learn_temperature"):
        CosineHead(5, 4, temperature=0.1, learn_temperature=1)
    with pytest.raises(ValueError, match="num_classes"):
        CosineHead(5, 0, temperature=0.1)
    with pytest.raises(TypeError):
        CosineHead(5, 4)  # the temperature has no default
