import math

import pytest
import torch

from softmaxkit.heads.spherical import SphericalOutputLayer
from softmaxkit.losses import spherical_softmax_loss, taylor_softmax_loss, z_loss

D, d, B = 300, 16, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny shapes: intra-op threads only add contention on a shared machine (100x slower)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CONFIGS = {
    "z_loss": ({"a": 1.0, "b": 0.5}, 0.5),
    "spherical_softmax": ({"eps": 1e-3}, 0.5),
    "taylor_softmax": ({}, 0.5),
}


def naive_loss(name, logits, target, opts):
    if name == "z_loss":
        return z_loss(logits, target, a=opts["a"], b=opts["b"], eps=opts.get("eps", 1e-12))
    if name == "spherical_softmax":
        return spherical_softmax_loss(logits, target, eps=opts["eps"])
    return taylor_softmax_loss(logits, target)


def make(name, seed=0, **kw):
    torch.manual_seed(seed)
    opts, lr = CONFIGS[name]
    layer = SphericalOutputLayer(d, D, loss=name, lr=lr, **opts, **kw)
    naive = torch.nn.Linear(d, D, bias=False, dtype=torch.float64)
    with torch.no_grad():
        naive.weight.copy_(layer.effective_weight())
    return layer, naive, opts, lr


def batches(n, seed=1, b=B, repeat_targets=False):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        h = torch.randn(b, d, generator=g, dtype=torch.float64)
        t = torch.randint(0, 20 if repeat_targets else D, (b,), generator=g)
        yield h, t


def train_both(name, steps, **kw):
    layer, naive, opts, lr = make(name, **kw)
    opt = torch.optim.SGD(naive.parameters(), lr=lr)
    for h, t in batches(steps, repeat_targets=True):
        h1 = h.clone().requires_grad_()
        loss1 = layer(h1, t)
        loss1.backward()
        layer.step()
        h2 = h.clone().requires_grad_()
        opt.zero_grad()
        loss2 = naive_loss(name, naive(h2), t, opts)
        loss2.backward()
        opt.step()
        torch.testing.assert_close(loss1, loss2, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-7, atol=1e-10)
    return layer, naive


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exact_after_100_sgd_steps(name):
    layer, naive = train_both(name, 100)
    W = layer.effective_weight()
    assert (W - naive.weight).abs().max() < 1e-4
    torch.testing.assert_close(W, naive.weight.detach(), rtol=1e-7, atol=1e-9)
    # the weights really moved
    assert (naive.weight - make(name)[1].weight).abs().max() > 1e-2
    # maintained quantities agree with W
    torch.testing.assert_close(layer.Q, W.T @ W, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(layer.wbar, W.sum(0), rtol=1e-8, atol=1e-9)
    eye = torch.eye(d, dtype=torch.float64)
    torch.testing.assert_close(layer.U @ layer.U_inv, eye, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_renormalisation_keeps_exactness(name):
    layer, naive = train_both(name, 30, renorm_every=1, renorm_threshold=1.0 + 1e-9)
    eye = torch.eye(d, dtype=torch.float64)
    assert torch.equal(layer.U, eye) and torch.equal(layer.s, torch.zeros(d, dtype=torch.float64))
    torch.testing.assert_close(
        layer.effective_weight(), naive.weight.detach(), rtol=1e-7, atol=1e-9
    )


def test_renormalize_preserves_weight():
    layer, _ = train_both("taylor_softmax", 5)
    W = layer.effective_weight()
    layer.renormalize()
    torch.testing.assert_close(layer.effective_weight(), W, rtol=0, atol=1e-12)
    assert torch.equal(layer.U, torch.eye(d, dtype=torch.float64))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_and_grad_h_match_naive(name):
    layer, naive, opts, _ = make(name)
    h, t = next(batches(1, seed=3))
    h1 = h.clone().requires_grad_()
    h2 = h.clone().requires_grad_()
    loss1 = layer(h1, t)
    loss2 = naive_loss(name, naive(h2), t, opts)
    cot = torch.tensor(1.7, dtype=torch.float64)
    loss1.backward(cot)
    loss2.backward(cot)
    torch.testing.assert_close(loss1, loss2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-9, atol=1e-12)


def test_gradcheck_h():
    layer, *_ = make("z_loss")
    layer.eval()
    h, t = next(batches(1, seed=4, b=3))
    h.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: layer(x, t), (h,))


def test_upstream_scale_and_accumulation():
    # (2 * loss1 + loss2).backward() over two forwards, one step == naive SGD on the same
    name = "taylor_softmax"
    layer, naive, opts, lr = make(name)
    opt = torch.optim.SGD(naive.parameters(), lr=lr)
    (h1, t1), (h2, t2) = batches(2, seed=5)
    (2 * layer(h1.requires_grad_(), t1) + layer(h2.requires_grad_(), t2)).backward()
    layer.step()
    loss = 2 * naive_loss(name, naive(h1), t1, opts) + naive_loss(name, naive(h2), t2, opts)
    loss.backward()
    opt.step()
    torch.testing.assert_close(layer.effective_weight(), naive.weight.detach())


def test_no_backward_uses_scale_one_and_float32_input():
    name = "spherical_softmax"
    layer, naive, opts, lr = make(name)
    h, t = next(batches(1, seed=6))
    out = layer(h.float(), t)  # h does not require grad: plain tensor
    assert out.dtype == torch.float32 and not out.requires_grad
    layer.step()
    naive_loss(name, naive(h), t, opts).backward()
    with torch.no_grad():
        naive.weight -= lr * naive.weight.grad
    torch.testing.assert_close(
        layer.effective_weight(), naive.weight.detach(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    layer, naive, opts, _ = make("z_loss")
    h = torch.randn(4, d).to(dtype).requires_grad_()
    t = torch.tensor([0, 1, 2, 3])
    loss = layer(h, t)
    loss.backward()
    assert loss.dtype == dtype and h.grad.dtype == dtype
    h2 = h.detach().double().requires_grad_()
    ref = naive_loss("z_loss", naive(h2), t, opts)
    ref.backward()
    torch.testing.assert_close(loss, ref.to(dtype))
    torch.testing.assert_close(h.grad, h2.grad.to(dtype))


def test_eval_mode_records_nothing():
    layer, *_ = make("z_loss")
    layer.eval()
    h, t = next(batches(1))
    layer(h, t)
    with pytest.raises(RuntimeError, match="no recorded batch"):
        layer.step()


def test_no_parameters_for_torch_optim():
    layer, *_ = make("z_loss")
    with pytest.raises(RuntimeError, match="plain SGD"):
        torch.optim.SGD(layer.parameters(), lr=0.1)
    model = torch.nn.Sequential(torch.nn.Linear(d, d), layer)
    assert len(list(model.parameters())) == 2  # only the Linear's
    assert len(list(layer.buffers())) == 6
    assert set(layer.state_dict()) == {"V", "U", "U_inv", "s", "wbar", "C"}


def test_errors():
    layer, *_ = make("z_loss")
    h = torch.randn(4, d, dtype=torch.float64)
    with pytest.raises(TypeError, match="soft or multi-hot"):
        layer(h, torch.softmax(torch.randn(4, D), 1))
    with pytest.raises(TypeError, match="soft or multi-hot"):
        layer(h, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 299\]"):
        layer(h, torch.tensor([0, 1, 2, D]))
    with pytest.raises(ValueError, match="target must have shape"):
        layer(h, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"h must have shape \(B, 16\)"):
        layer(torch.randn(4, d + 1), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"h must have shape \(B, 16\) \(batch B >= 1"):
        layer(torch.randn(0, d), torch.tensor([], dtype=torch.long))
    with pytest.raises(TypeError, match="h must be a floating-point"):
        layer(torch.ones(4, d, dtype=torch.long), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="loss must be one of"):
        SphericalOutputLayer(d, D, loss="softmax")
    with pytest.raises(ValueError, match="lr must be in"):
        SphericalOutputLayer(d, D, lr=0.0)
    with pytest.raises(ValueError, match="a must be in"):
        SphericalOutputLayer(d, D, a=-1.0)
    with pytest.raises(ValueError, match="a, b is not an option of loss='taylor_softmax'"):
        SphericalOutputLayer(d, D, loss="taylor_softmax", a=1.0, b=0.0)
    with pytest.raises(ValueError, match="eps is not an option"):
        SphericalOutputLayer(d, D, loss="taylor_softmax", eps=0.1)
    with pytest.raises(ValueError, match="eps must be in"):
        SphericalOutputLayer(d, D, loss="spherical_softmax", eps=0.0)
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.float64"):
        SphericalOutputLayer(d, D, dtype=torch.float16)
    with pytest.raises(ValueError, match="out_features must be in"):
        SphericalOutputLayer(d, 1)
    with pytest.raises(ValueError, match="weight must have shape"):
        layer.set_weight(torch.zeros(3, 3))
    with pytest.raises(RuntimeError, match="no recorded batch"):
        layer.step()


def test_singular_update_raises():
    layer, *_ = make("spherical_softmax")
    h = torch.randn(1, d, dtype=torch.float64)
    layer(h, torch.tensor([0]))
    # M = I - lr f1 h h^T is singular exactly at lr = 1 / (f1 |h|^2)
    s2 = h @ layer.Q @ h.T
    f1 = 2.0 / (s2 + D * 1e-3)
    W = layer.effective_weight()
    lr0 = (1.0 / (f1 * h.square().sum())).item()
    for lr in (lr0, math.nextafter(lr0, math.inf), math.nextafter(lr0, 0.0)):
        with pytest.raises(RuntimeError, match="singular.*smaller learning rate"):
            layer.step(lr=lr)
    assert torch.equal(layer.effective_weight(), W)  # nothing changed, batch still pending
    layer.step(lr=0.1)


@pytest.mark.parametrize("offset", [300.0, 3000.0])
def test_z_loss_float32_with_a_common_offset_matches_float64(offset):
    """Outputs sharing a large offset: the spread comes from the centred statistics (h^T C h),
    so float32 agrees with float64 (E[o^2] - mu^2 gave 1.7e11 instead of 0.70 at 3000),
    before and after SGD steps (C's update has no cancellation either)."""
    g = torch.Generator().manual_seed(5)
    W = 0.3 * torch.randn(D, d, generator=g, dtype=torch.float64)
    W[:, 0] += offset  # o_k = offset * h_0 + ...: every output shares the offset
    W = W.float().double()  # both layers start from the same (float32) weight
    batches_ = []
    for _ in range(3):
        h = torch.randn(B, d, generator=g, dtype=torch.float64).float().double()
        h[:, 0] = 1.0
        batches_.append((h, torch.randint(0, D, (B,), generator=g)))
    layers = {}
    for dtype in (torch.float32, torch.float64):
        layer = SphericalOutputLayer(d, D, loss="z_loss", a=1.0, b=0.5, lr=1e-3, dtype=dtype)
        layer.set_weight(W.to(dtype))
        layers[dtype] = layer
    naive = naive_loss("z_loss", batches_[0][0] @ W.T, batches_[0][1], CONFIGS["z_loss"][0])
    for k, (h, t) in enumerate(batches_):
        losses, grads = {}, {}
        for dtype, layer in layers.items():
            x = h.to(dtype).requires_grad_()
            losses[dtype] = layer(x, t)
            losses[dtype].backward()
            grads[dtype] = x.grad
            layer.step()
        if k == 0:
            torch.testing.assert_close(losses[torch.float64], naive, rtol=1e-10, atol=1e-12)
        # float32's own limit here is its rounding of weights of size `offset` (~1e-4
        # relative after a few steps at 3000); the uncentred form was off by 7e-3 (loss)
        # and 5e-2 (grad_h) at 300 and by 1e11 at 3000
        loss32, loss64 = float(losses[torch.float32]), float(losses[torch.float64])
        assert abs(loss32 - loss64) <= 1e-3 * abs(loss64), (offset, loss32, loss64)
        err = (grads[torch.float32].double() - grads[torch.float64]).abs().max()
        assert err <= 5e-3 * grads[torch.float64].abs().max(), (offset, float(err))


def test_state_dict_with_the_uncentred_gram_loads():
    layer, *_ = make("z_loss")
    state = layer.state_dict()
    W = layer.effective_weight()
    old = {k: v for k, v in state.items() if k != "C"}
    old["Q"] = W.T @ W
    fresh = SphericalOutputLayer(d, D, loss="z_loss")
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.C, layer.C, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fresh.Q, W.T @ W, rtol=1e-9, atol=1e-9)
