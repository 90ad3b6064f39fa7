import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.losses.metric import NormalizedSoftmaxLoss, cosine_logits, normalized_softmax_loss
from tests.helpers import HALF_DTYPES, np64
from tests.reference import metric_ref as ref

gen = torch.Generator().manual_seed(5)


def case(n=6, c=5, d=4, dtype=torch.float64):
    x = torch.randn(n, d, generator=gen, dtype=dtype) * 3
    w = torch.randn(c, d, generator=gen, dtype=dtype)
    t = torch.randint(0, c, (n,), generator=gen)
    return x, w, t


def torch_version(x, w, target, temperature=0.05, **kwargs):
    """What a user would write: F.cross_entropy over the cosine logits."""
    logits = F.normalize(x, dim=1, eps=1e-12) @ F.normalize(w, dim=1, eps=1e-12).t()
    return F.cross_entropy(logits / temperature, target, **kwargs)


# --- against the float64 reference and against F.cross_entropy --------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("soft", [False, True])
def test_matches_reference_for_every_reduction(soft, smoothing):
    x, w, t = case()
    if soft:
        t = torch.softmax(torch.randn(6, 5, generator=gen, dtype=torch.float64), 1)
    expected = ref.per_sample(np64(x), np64(w), t.numpy(), 0.1, smoothing)
    kw = {"temperature": 0.1, "label_smoothing": smoothing}
    torch.testing.assert_close(
        normalized_softmax_loss(x, w, t, reduction="none", **kw), torch.from_numpy(expected)
    )
    total = normalized_softmax_loss(x, w, t, reduction="sum", **kw).item()
    assert math.isclose(total, expected.sum(), rel_tol=1e-12)
    assert math.isclose(
        normalized_softmax_loss(x, w, t, **kw).item(), expected.mean(), rel_tol=1e-12
    )


def test_gradients_match_the_normalisation_jacobian():
    # NormFace: d/dx = (I - x^ x^T) / |x| times the gradient w.r.t. x^ (same for the proxies)
    x, w, t = case()
    g = torch.randn(6, generator=gen, dtype=torch.float64)
    x.requires_grad_()
    w.requires_grad_()
    out = normalized_softmax_loss(x, w, t, temperature=0.2, label_smoothing=0.1, reduction="none")
    gx, gw = torch.autograd.grad(out, (x, w), g)
    ex, ew = ref.gradients(np64(x), np64(w), t.numpy(), 0.2, g.numpy(), label_smoothing=0.1)
    np.testing.assert_allclose(np64(gx), ex, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np64(gw), ew, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("soft", [False, True])
def test_equals_cross_entropy_of_cosine_logits(reduction, smoothing, soft):
    x, w, t = case(n=7)
    if soft:
        t = torch.softmax(torch.randn(7, 5, generator=gen, dtype=torch.float64), 1)
    else:
        t[3] = -100
    x.requires_grad_()
    w.requires_grad_()
    kw = {"reduction": reduction, "label_smoothing": smoothing}
    ours = normalized_softmax_loss(x, w, t, **kw)
    theirs = torch_version(x, w, t, **kw)
    torch.testing.assert_close(ours, theirs)
    cot = torch.randn(ours.shape, generator=gen, dtype=ours.dtype)
    for a, b in zip(
        torch.autograd.grad(ours, (x, w), cot), torch.autograd.grad(theirs, (x, w), cot)
    ):
        torch.testing.assert_close(a, b)


def test_extra_dims_layout():
    # (N, D, d1) embeddings: one embedding per position, logits (N, C, d1)
    x = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 5, (3, 2), generator=gen)
    logits = cosine_logits(x, w, temperature=0.1)
    assert logits.shape == (3, 5, 2)
    flat = normalized_softmax_loss(
        x.movedim(1, -1).reshape(-1, 4), w, t.reshape(-1), temperature=0.1, reduction="none"
    )
    out = normalized_softmax_loss(x, w, t, temperature=0.1, reduction="none")
    torch.testing.assert_close(out, flat.view(3, 2))
    soft = torch.softmax(torch.randn(3, 5, 2, generator=gen, dtype=torch.float64), 1)
    torch.testing.assert_close(
        normalized_softmax_loss(x, w, soft, temperature=0.1),
        F.cross_entropy(logits, soft),
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(reduction):
    x, w, t = case(n=5, c=4, d=3)
    t[1] = -100
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: normalized_softmax_loss(a, b, t, temperature=0.5, reduction=reduction), (x, w)
    )
    soft = torch.softmax(torch.randn(5, 4, generator=gen, dtype=torch.float64), 1)
    assert torch.autograd.gradcheck(
        lambda a, b: normalized_softmax_loss(
            a, b, soft, temperature=0.5, label_smoothing=0.2, reduction=reduction
        ),
        (x, w),
    )
    x3 = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    t3 = torch.randint(0, 4, (2, 2), generator=gen)
    assert torch.autograd.gradcheck(
        lambda a, b: normalized_softmax_loss(a, b, t3, temperature=0.5, reduction=reduction),
        (x3, w),
    )


# --- invariances, bounds, NormFace's lower bound ------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    c=st.integers(2, 6),
    d=st.integers(1, 5),
    temperature=st.floats(0.02, 2.0),
    seed=st.integers(0, 2**16),
)
def test_invariant_to_positive_rescaling(n, c, d, temperature, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    t = torch.randint(0, c, (n,), generator=g)
    a = torch.rand(n, 1, generator=g, dtype=torch.float64) * 1e3 + 1e-3
    b = torch.rand(c, 1, generator=g, dtype=torch.float64) * 1e3 + 1e-3
    base = normalized_softmax_loss(x, w, t, temperature=temperature, reduction="none")
    scaled = normalized_softmax_loss(a * x, b * w, t, temperature=temperature, reduction="none")
    torch.testing.assert_close(scaled, base)
    # the cosine bounds the logits, hence the loss
    lo = math.log1p((c - 1) * math.exp(-2 / temperature))
    hi = math.log1p((c - 1) * math.exp(2 / temperature))
    assert ((base >= lo - 1e-9) & (base <= hi + 1e-9)).all()


@settings(max_examples=25, deadline=None)
@given(c=st.integers(2, 6), per_class=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_normface_lower_bound_holds_for_balanced_batches(c, per_class, seed):
    # NormFace: with unit features and weights and balanced classes the mean loss is at least
    # log(1 + (n - 1) exp(-s n / (n - 1))), s = 1 / temperature
    g = torch.Generator().manual_seed(seed)
    d = c + 1
    x = torch.randn(c * per_class, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    t = torch.arange(c).repeat(per_class)
    loss = normalized_softmax_loss(x, w, t, temperature=1.0).item()
    assert loss >= ref.normface_lower_bound(c, 1.0) - 1e-12


def test_unit_scale_cannot_fit_but_the_paper_temperature_can():
    # the bound is reached by optimisation at s = 1, far above what sigma = 0.05 reaches: the
    # reason both papers scale the cosine (NormFace) / use a small temperature (Zhai & Wu)
    torch.manual_seed(0)
    c, d = 4, 8
    t = torch.arange(c).repeat(2)
    finals = {}
    for temperature in (1.0, 0.05):
        x = torch.randn(2 * c, d, dtype=torch.float64, requires_grad=True)
        w = torch.randn(c, d, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([x, w], lr=0.1)
        for _ in range(100):
            opt.zero_grad()
            loss = normalized_softmax_loss(x, w, t, temperature=temperature)
            loss.backward()
            opt.step()
        finals[temperature] = loss.item()
    bound = ref.normface_lower_bound(c, 1.0)
    assert bound <= finals[1.0] < bound + 1e-3
    assert finals[0.05] < 1e-3


# --- zero vectors, extremes, dtypes, ignore_index, empty ----------------------------------------


def test_zero_vectors_give_finite_loss_and_gradient():
    x, w, t = case(n=3, c=4, d=3, dtype=torch.float32)
    x[1] = 0.0
    w[2] = 0.0
    x.requires_grad_()
    w.requires_grad_()
    per = normalized_softmax_loss(x, w, t, reduction="none")
    per.sum().backward()
    assert torch.isfinite(per).all()
    assert math.isclose(per[1].item(), math.log(4), rel_tol=1e-6)  # zero logits: uniform
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    zero = torch.zeros(2, 3, requires_grad=True)
    loss = normalized_softmax_loss(zero, torch.zeros(4, 3), torch.tensor([0, 3]))
    loss.backward()
    assert math.isclose(loss.item(), math.log(4), rel_tol=1e-6) and torch.isfinite(zero.grad).all()


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_magnitudes_and_temperature(scale):
    x, w, t = case(dtype=torch.float32)
    x = (x * scale).requires_grad_()
    w = (w * scale).requires_grad_()
    loss = normalized_softmax_loss(x, w, t, temperature=1e-4)  # logits up to +-1e4
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    torch.testing.assert_close(
        loss.double(),
        normalized_softmax_loss(x.detach().double(), w.detach().double(), t, temperature=1e-4),
        rtol=1e-4,
        atol=1e-3,
    )


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_dtypes(dtype):
    x, w, t = case(dtype=torch.float32)
    xh = x.to(dtype).requires_grad_()
    wh = w.to(dtype).requires_grad_()
    loss = normalized_softmax_loss(xh, wh, t, label_smoothing=0.1)
    assert loss.dtype == dtype
    expected = normalized_softmax_loss(
        xh.detach().float(), wh.detach().float(), t, label_smoothing=0.1
    )
    torch.testing.assert_close(loss.float(), expected, atol=2e-2, rtol=2e-2)
    loss.backward()
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad).all()
    assert wh.grad.dtype == dtype and torch.isfinite(wh.grad).all()
    # mixed: half embeddings, float32 proxies (autocast-style) -> float32
    assert normalized_softmax_loss(xh, w, t).dtype == torch.float32


def test_ignore_index():
    x, w, t = case()
    t[[1, 4]] = 7
    per = normalized_softmax_loss(x, w, t, reduction="none", ignore_index=7)
    assert per[1] == 0 and per[4] == 0
    kept = torch.tensor([0, 2, 3, 5])
    torch.testing.assert_close(normalized_softmax_loss(x, w, t, ignore_index=7), per[kept].mean())
    x.requires_grad_()
    normalized_softmax_loss(x, w, t, ignore_index=7).backward()
    assert (x.grad[[1, 4]] == 0).all() and (x.grad[[0, 2]] != 0).any()
    x.grad = None
    w.requires_grad_()
    loss = normalized_softmax_loss(x, w, torch.full((6,), -100))
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all() and (w.grad == 0).all()


def test_empty_batch():
    x = torch.zeros(0, 4, requires_grad=True)
    w = torch.randn(3, 4, requires_grad=True)
    loss = normalized_softmax_loss(x, w, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == (0, 4) and (w.grad == 0).all()
    assert normalized_softmax_loss(
        x, w, torch.zeros(0, dtype=torch.long), reduction="none"
    ).shape == (0,)


def test_logits_not_kept_twice():
    # forward through the engine saves the logits once (F.cross_entropy also keeps its
    # log-softmax): count the N x C tensors autograd holds
    x, w, t = case(n=64, c=50, d=8, dtype=torch.float32)
    x.requires_grad_()
    saved = []

    def pack(tensor):
        saved.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s):
        normalized_softmax_loss(x, w, t)
    assert sum(1 for s in saved if tuple(s) == (64, 50)) == 1


# --- module twin ---------------------------------------------------------------------------------


def test_module_owns_proxies_and_matches_functional():
    torch.manual_seed(0)
    head = NormalizedSoftmaxLoss(8, 5, temperature=0.1, label_smoothing=0.1, reduction="sum")
    assert head.weight.shape == (5, 8)
    assert head.weight.abs().max() <= 1 / math.sqrt(8)  # official init: U(-1/sqrt(D), 1/sqrt(D))
    x = torch.randn(4, 8, requires_grad=True)
    t = torch.tensor([0, 1, 4, 2])
    torch.testing.assert_close(head.logits(x), cosine_logits(x, head.weight, temperature=0.1))
    loss = head(x, t)
    torch.testing.assert_close(
        loss,
        normalized_softmax_loss(
            x, head.weight, t, temperature=0.1, label_smoothing=0.1, reduction="sum"
        ),
    )
    loss.backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    assert list(head.state_dict()) == ["weight"]
    assert "temperature=0.1" in repr(head) and "num_classes=5" in repr(head)
    assert NormalizedSoftmaxLoss(3, 2, dtype=torch.float64).weight.dtype == torch.float64
    assert NormalizedSoftmaxLoss(3, 2).temperature == 0.05  # Zhai & Wu


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, w, target, kwargs, error, match",
    [
        (
            torch.randn(3, 4),
            torch.randn(5, 4),
            torch.tensor([0, 1, 5]),
            {},
            ValueError,
            r"\[0, 4\]",
        ),
        (torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1]), {}, ValueError, "target must"),
        (torch.randn(3, 4), torch.randn(5, 4), torch.rand(3, 4), {}, ValueError, "probabilities"),
        (
            torch.randn(3, 4),
            torch.randn(5, 4),
            torch.tensor([True, False, True]),
            {},
            TypeError,
            "class indices",
        ),
        (
            torch.randn(4),
            torch.randn(5, 4),
            torch.tensor(0),
            {},
            ValueError,
            "embeddings must have",
        ),
        (
            torch.randn(3, 4),
            torch.randn(5),
            torch.tensor([0, 1, 2]),
            {},
            ValueError,
            "class_weights",
        ),
        (torch.randn(3, 4), torch.randn(5, 3), torch.tensor([0, 1, 2]), {}, ValueError, "D=4"),
        (
            torch.arange(12).view(3, 4),
            torch.randn(5, 4),
            torch.tensor([0, 1, 2]),
            {},
            TypeError,
            "embeddings must be a floating-point",
        ),
        (
            torch.randn(3, 4),
            torch.randn(5, 4),
            torch.tensor([0, 1, 2]),
            {"temperature": 0.0},
            ValueError,
            "temperature must be in",
        ),
        (
            torch.randn(3, 4),
            torch.randn(5, 4),
            torch.tensor([0, 1, 2]),
            {"eps": -1.0},
            ValueError,
            "eps must be in",
        ),
        (
            torch.randn(3, 4),
            torch.randn(5, 4),
            torch.tensor([0, 1, 2]),
            {"reduction": "avg"},
            ValueError,
            "reduction must be one of",
        ),
        (
            torch.randn(3, 4),
            torch.randn(5, 4),
            torch.tensor([0, 1, 2]),
            {"label_smoothing": 1.5},
            ValueError,
            "label_smoothing must be in",
        ),
    ],
)
def test_errors(x, w, target, kwargs, error, match):
    with pytest.raises(error, match=match):
        normalized_softmax_loss(x, w, target, **kwargs)


def test_module_errors():
    with pytest.raises(ValueError, match="embedding_dim must be in"):
        NormalizedSoftmaxLoss(0, 3)
    with pytest.raises(ValueError, match="temperature must be in"):
        NormalizedSoftmaxLoss(3, 3, temperature=-1.0)
