"""⊥Grad optimizer wrapper (Prieto et al. 2025): projection, sharing with the inner optimizer."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.dynamics import PerpGrad
from tests.reference import perpgrad_ref as ref


def _param(shape, seed, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(shape, generator=g, dtype=dtype) * scale)


def _with_grad(p: torch.nn.Parameter, seed: int, grad=None) -> torch.nn.Parameter:
    if grad is None:
        g = torch.Generator().manual_seed(seed + 1000)
        grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    p.grad = grad.to(p.dtype).clone()
    return p


def _projected(p: torch.nn.Parameter, rescale: bool = True) -> torch.Tensor:
    opt = PerpGrad([p], torch.optim.SGD, rescale=rescale, lr=0.0)
    opt.project_gradients_()
    return p.grad


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 4)])
def test_matches_reference_and_is_orthogonal(shape, rescale):
    p = _with_grad(_param(shape, 0), 0)
    w, g = p.detach().numpy().copy(), p.grad.numpy().copy()
    got = _projected(p, rescale).numpy()
    np.testing.assert_allclose(got, ref.perpendicular(w, g, rescale), rtol=1e-12, atol=1e-14)
    assert abs(float(np.dot(w.ravel(), got.ravel()))) < 1e-12 * np.linalg.norm(w) * np.linalg.norm(
        g
    )


def test_rescale_keeps_the_norm_and_bare_projection_is_the_paper_formula():
    p = _with_grad(_param((6, 4), 1), 1)
    w, g = p.detach().clone(), p.grad.clone()
    rescaled = _projected(p, True).clone()
    assert torch.linalg.vector_norm(rescaled).item() == pytest.approx(
        torch.linalg.vector_norm(g).item(), rel=1e-12
    )
    p.grad = g.clone()
    bare = _projected(p, False)
    paper = g - (torch.sum(w * g) / torch.sum(w * w)) * w  # Eq. 12
    torch.testing.assert_close(bare, paper, rtol=1e-13, atol=1e-15)
    assert torch.linalg.vector_norm(bare) < torch.linalg.vector_norm(g)
    torch.testing.assert_close(rescaled / rescaled.norm(), bare / bare.norm())


@pytest.mark.parametrize("rescale", [True, False])
def test_zero_weights_leave_the_gradient_unchanged(rescale):
    p = _with_grad(torch.nn.Parameter(torch.zeros(3, 4)), 2)
    g = p.grad.clone()
    assert torch.equal(_projected(p, rescale), g)


@pytest.mark.parametrize("rescale", [True, False])
def test_parallel_and_zero_gradients_give_zero_not_nan(rescale):
    p = torch.nn.Parameter(torch.ones(5))
    p.grad = torch.full((5,), 2.0)  # exactly parallel: the whole gradient is NLM
    assert torch.equal(_projected(p, rescale), torch.zeros(5))
    p.grad = torch.zeros(5)
    assert torch.equal(_projected(p, rescale), torch.zeros(5))


def test_nearly_parallel_gradient_is_inflated_by_the_rescale():
    """Documented hazard: g = c w + tiny noise; the rescale blows the noise up to ||g||."""
    w = _param((50,), 3)
    noise = torch.randn(50, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    p = _with_grad(w, 3, grad=3.0 * w.detach() + 1e-9 * noise)
    g_norm = p.grad.norm().item()
    rescaled = _projected(p, True)
    assert rescaled.norm().item() == pytest.approx(g_norm)
    p.grad = 3.0 * w.detach() + 1e-9 * noise
    assert _projected(p, False).norm().item() < 1e-8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_parameters_are_projected_in_float32(dtype):
    p = _with_grad(_param((64,), 5, dtype=dtype, scale=1e-3), 5)
    p.grad = p.grad * 1e-3  # w.w ~ 6e-5 and grads ~1e-3: fine in float32
    w, g = p.detach().double().numpy(), p.grad.double().numpy()
    got = _projected(p, True)
    assert got.dtype == dtype and torch.isfinite(got).all()
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    np.testing.assert_allclose(
        got.double().numpy(), ref.perpendicular(w, g), rtol=tol, atol=tol * 1e-3
    )


def test_none_grads_are_skipped_and_sparse_grads_raise():
    a, b = _param((3,), 6), _param((3,), 7)
    _with_grad(a, 6)
    opt = PerpGrad([a, b], torch.optim.SGD, lr=0.1)
    opt.step()
    assert b.grad is None
    emb = torch.nn.Embedding(4, 3, sparse=True)
    emb(torch.tensor([1])).sum().backward()
    opt = PerpGrad(emb.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="PerpGrad does not support sparse gradients"):
        opt.step()


def _mlp(seed: int = 0, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4, bias=False)
    ).to(dtype)


def _batch(dtype=torch.float64):
    g = torch.Generator().manual_seed(11)
    return torch.randn(16, 6, generator=g, dtype=dtype), torch.randint(0, 4, (16,), generator=g)


def _loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize("rescale", [True, False])
def test_steps_equal_manual_projection_then_torch_adamw(rescale):
    kwargs = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    model, twin = _mlp(), _mlp()
    opt = PerpGrad(model.parameters(), torch.optim.AdamW, rescale=rescale, **kwargs)
    twin_opt = torch.optim.AdamW(twin.parameters(), **kwargs)
    batch = _batch()
    for _ in range(3):
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
        twin_opt.zero_grad()
        _loss(twin, batch).backward()
        for q in twin.parameters():
            q.grad = torch.from_numpy(
                ref.perpendicular(q.detach().numpy(), q.grad.numpy(), rescale)
            )
        twin_opt.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_one_step_matches_float64_adamw_transcription():
    model = _mlp()
    kwargs = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.2)
    opt = PerpGrad(model.parameters(), **kwargs)
    _loss(model, _batch()).backward()
    before = [(p.detach().numpy().copy(), p.grad.numpy().copy()) for p in model.parameters()]
    opt.step()
    for (w, g), p in zip(before, model.parameters()):
        gp = ref.perpendicular(w, g, True)
        want, _, _ = ref.adamw_step(w, gp, 0.0, 0.0, 1, **kwargs)
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-12, atol=1e-14)


def test_shares_param_groups_state_and_defaults_with_the_inner_optimizer():
    model = _mlp()
    opt = PerpGrad(model.parameters(), lr=0.01)
    inner = opt.base_optimizer
    assert isinstance(inner, torch.optim.AdamW)
    assert opt.param_groups is inner.param_groups
    assert opt.state is inner.state and opt.defaults is inner.defaults
    _loss(model, _batch()).backward()
    opt.step()
    assert len(opt.state) == len(list(model.parameters()))
    opt.param_groups[0]["lr"] = 0.5
    assert inner.param_groups[0]["lr"] == 0.5
    extra = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt.add_param_group({"params": [extra], "lr": 0.2})
    assert len(inner.param_groups) == 2 and inner.param_groups[1]["lr"] == 0.2
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_state_dict_round_trip_keeps_inner_hyperparameters_and_state():
    model = _mlp()
    opt = PerpGrad(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-25, weight_decay=0.0)
    batch = _batch()
    for _ in range(2):
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    twin = _mlp()
    twin.load_state_dict(model.state_dict())
    fresh = PerpGrad(twin.parameters(), lr=0.5)  # torch defaults: betas (0.9, 0.999), eps 1e-8
    fresh.load_state_dict(sd)
    group = fresh.base_optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (0.01, (0.9, 0.99), 1e-25)
    for p, q in zip(model.parameters(), twin.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], fresh.base_optimizer.state[q][key])
    for o, m in ((opt, model), (fresh, twin)):
        o.zero_grad()
        _loss(m, batch).backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    plain = torch.optim.AdamW(_mlp().parameters())
    plain.load_state_dict(opt.state_dict())  # interchangeable with the plain optimizer
    assert plain.param_groups[0]["betas"] == (0.9, 0.99)


def test_loading_an_adamw_state_dict_reaches_the_stepping_optimizer():
    """The official driver's pattern; there the inner AdamW kept the torch defaults."""
    model = _mlp()
    base = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-25)
    opt = PerpGrad(model.parameters(), torch.optim.AdamW, lr=0.01, weight_decay=0.0)
    opt.load_state_dict(base.state_dict())
    group = opt.base_optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.99) and group["eps"] == 1e-25


def test_lr_scheduler_changes_the_lr_the_inner_optimizer_uses():
    p = _param((4,), 8)
    opt = PerpGrad([p], torch.optim.SGD, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    for expected_lr in (1.0, 0.1, 0.01):
        assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr)
        _with_grad(p, 8)
        before = p.detach().clone()
        opt.step()
        moved = before - p.detach()
        torch.testing.assert_close(moved, expected_lr * p.grad)  # SGD: w -= lr * g_perp
        sched.step()


def test_closure_is_evaluated_once_and_its_loss_returned():
    model, twin = _mlp(), _mlp()
    batch = _batch()
    opt = PerpGrad(model.parameters(), lr=0.01)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = _loss(model, batch)
        loss.backward()
        return loss

    w0 = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():  # step enables grad for the closure, as torch optimizers do
        loss = opt.step(closure)
    assert len(calls) == 1 and loss.item() == pytest.approx(_loss(twin, batch).item())
    for w, p in zip(w0, model.parameters()):
        assert abs(torch.sum(w * p.grad).item()) < 1e-12  # the step used projected grads
    twin_opt = PerpGrad(twin.parameters(), lr=0.01)
    _loss(twin, batch).backward()
    assert twin_opt.step() is None
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_sgd_inner_and_rescale_false_move_by_the_bare_projection():
    p = _with_grad(_param((3, 3), 9), 9)
    w, g = p.detach().numpy().copy(), p.grad.numpy().copy()
    PerpGrad([p], torch.optim.SGD, rescale=False, lr=1.0).step()
    np.testing.assert_allclose(p.detach().numpy(), w - ref.perpendicular(w, g, False), rtol=1e-12)


def test_pickle_and_deepcopy_keep_the_sharing():
    model = _mlp()
    opt = PerpGrad(model.parameters(), rescale=False, lr=0.01)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert isinstance(clone, PerpGrad) and clone.rescale is False
        assert clone.param_groups is clone.base_optimizer.param_groups
        assert clone.base_optimizer is not opt.base_optimizer
    assert "rescale=False" in repr(opt) and "AdamW" in repr(opt)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
    w_scale=st.sampled_from([1e-3, 1.0, 1e3]),
    rescale=st.booleans(),
)
def test_property_projected_gradient_is_orthogonal(shape, seed, w_scale, rescale):
    p = _with_grad(_param(tuple(shape), seed, scale=w_scale), seed)
    w, g = p.detach().clone(), p.grad.clone()
    bare = torch.from_numpy(ref.perpendicular(w.numpy(), g.numpy(), rescale=False))
    got = _projected(p, rescale)
    # the rescale multiplies the rounding residual along w by ||g|| / ||g_perp||
    inflation = (g.norm() / bare.norm()).item() if rescale and bare.norm() > 0 else 1.0
    assert abs(torch.sum(w * got)) <= 1e-12 * w.norm() * g.norm() * inflation
    if rescale and got.norm() > 0:
        assert got.norm().item() == pytest.approx(g.norm().item(), rel=1e-10)
    if bare.norm() > 1e-6 * g.norm():  # away from the near-parallel case (documented)
        expected = ref.perpendicular(w.numpy(), g.numpy(), rescale)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-7, atol=1e-9 * g.norm().item())


def test_single_element_tensors_are_always_parallel():
    """Documented: the whole gradient of a 1-element tensor is along w; the rescale
    then inflates rounding noise, the bare projection gives (almost) zero."""
    p = torch.nn.Parameter(torch.tensor([0.37], dtype=torch.float64))
    p.grad = torch.tensor([1.3], dtype=torch.float64)
    assert abs(_projected(p, False).item()) < 1e-15
    p.grad = torch.tensor([1.3], dtype=torch.float64)
    assert abs(_projected(p, True).item()) in (0.0, pytest.approx(1.3))


def test_errors_name_the_argument():
    params = list(_mlp().parameters())
    with pytest.raises(TypeError, match="base_optimizer_cls must be a subclass of torch.optim"):
        PerpGrad(params, "AdamW")
    with pytest.raises(TypeError, match="base_optimizer_cls must be a subclass"):
        PerpGrad(params, torch.optim.AdamW(params))
    with pytest.raises(ValueError, match="base_optimizer_cls must not be torch.optim.lbfgs.LBFGS"):
        PerpGrad(params, torch.optim.LBFGS)
    with pytest.raises(TypeError, match="rescale must be a bool, got 1"):
        PerpGrad(params, rescale=1)
    with pytest.raises(ValueError, match=r"lr must be in \[0, inf\], got -1"):
        PerpGrad(params, lr=-1.0)
    with pytest.raises(ValueError, match="params must hold at least one parameter"):
        PerpGrad([])


def test_params_and_lr_errors_name_them():
    """Not torch's optimizer messages ("Invalid learning rate", "'int' object is not
    iterable", "'<' not supported between 'str' and 'float'")."""
    params = list(_mlp().parameters())
    with pytest.raises(TypeError, match="lr must be a real number, got '0.1'"):
        PerpGrad(params, lr="0.1")
    with pytest.raises(ValueError, match="lr must be a number or a one-element tensor"):
        PerpGrad(params, lr=torch.ones(2))
    with pytest.raises(ValueError, match=r"lr must have all values in \[0, inf\)"):
        PerpGrad(params, lr=torch.tensor(-0.5))
    with pytest.raises(ValueError, match=r"params\[1\]\['lr'\] must be in \[0, inf\]"):
        PerpGrad([{"params": params[:1]}, {"params": params[1:], "lr": -1.0}])
    with pytest.raises(ValueError, match=r"params\[0\] is a parameter group without"):
        PerpGrad([{"lr": 0.1}])
    with pytest.raises(TypeError, match="params must be an iterable of tensors"):
        PerpGrad(3)
    with pytest.raises(TypeError, match="params must be an iterable of tensors"):
        PerpGrad(params[0])
    with pytest.raises(TypeError, match="params must be an ordered iterable"):
        PerpGrad(set(params))
    with pytest.raises(TypeError, match=r"params\[1\] must be a tensor"):
        PerpGrad([params[0], 3.0])
    opt = PerpGrad(p for p in params)  # a generator is read once, as torch does
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)
    opt = PerpGrad(params, lr=torch.tensor(0.01))  # a tensor lr, as torch accepts
    with pytest.raises(TypeError, match="set_to_none must be a bool, got 0"):
        opt.zero_grad(set_to_none=0)
