import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.losses.compositional import (
    CompositionalNLLLoss,
    CompositionalState,
    compositional_nll,
)
from tests.helpers import HALF_DTYPES, np64
from tests.reference import compositional_ref as ref

gen = torch.Generator().manual_seed(17)
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def batches(steps=4, n=5, m=7, scale=2.0):
    out = []
    for _ in range(steps):
        f_data = torch.randn(n, generator=gen, dtype=torch.float64) * scale
        f_noise = torch.randn(m, generator=gen, dtype=torch.float64) * scale
        log_q = torch.randn(m, generator=gen, dtype=torch.float64)
        out.append((f_data, f_noise, log_q))
    return out


def gaussian_noise(m, s, g):
    z = s * torch.randn(m, generator=g, dtype=torch.float64)
    return z, -0.5 * (z / s) ** 2 - math.log(s) - LOG_SQRT_2PI


# --- the estimator against a float64 transcription of the algorithm ------------------------------


@pytest.mark.parametrize("gamma", [0.3, 1.0])
def test_surrogate_gradient_is_the_compositional_estimator(gamma):
    data = batches()
    expected = ref.meco_steps([tuple(np64(t) for t in b) for b in data], gamma)
    state = CompositionalState(gamma)
    for (f_data, f_noise, log_q), (u, value, d_data, d_noise) in zip(data, expected):
        f_data, f_noise = f_data.clone().requires_grad_(), f_noise.clone().requires_grad_()
        loss = compositional_nll(f_data, f_noise, state, log_noise=log_q)
        g_data, g_noise = torch.autograd.grad(loss, (f_data, f_noise))
        assert math.isclose(loss.item(), value, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(state.log_partition().exp().item(), u, rel_tol=1e-12)
        np.testing.assert_allclose(np64(g_data), d_data, rtol=1e-12)
        np.testing.assert_allclose(np64(g_noise), d_noise, rtol=1e-11, atol=1e-15)
    assert state.steps.item() == len(data)


def test_gradient_through_a_model_matches_hand_computation():
    # linear model f(x) = theta . phi(x): grad = -mean phi(x_i) + (1/u_t) mean_j r_j phi(z_j)
    theta = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    state = CompositionalState(0.2)
    u = None
    for _ in range(3):
        phi_x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
        phi_z = torch.randn(9, 3, generator=gen, dtype=torch.float64)
        log_q = torch.randn(9, generator=gen, dtype=torch.float64)
        loss = compositional_nll(phi_x @ theta, phi_z @ theta, state, log_noise=log_q)
        (grad,) = torch.autograd.grad(loss, theta)
        th, px, pz, lq = np64(theta), np64(phi_x), np64(phi_z), np64(log_q)
        r = np.exp(pz @ th - lq)
        u = r.mean() if u is None else 0.8 * u + 0.2 * r.mean()
        hand = -px.mean(0) + (r[:, None] * pz).mean(0) / u
        np.testing.assert_allclose(np64(grad), hand, rtol=1e-11)
        with torch.no_grad():
            theta -= 0.1 * grad


def test_gamma_one_is_the_plain_minibatch_estimator():
    state = CompositionalState(1.0)
    for f_data, f_noise, log_q in batches(steps=3):
        f_noise.requires_grad_()
        ours = compositional_nll(f_data, f_noise, state, log_noise=log_q)
        plain = compositional_nll(f_data, f_noise, None, log_noise=log_q)
        by_hand = -f_data.mean() + torch.logsumexp(f_noise - log_q, 0) - math.log(7)
        torch.testing.assert_close(ours, plain)
        torch.testing.assert_close(plain, by_hand)
        torch.testing.assert_close(
            torch.autograd.grad(ours, f_noise)[0], torch.autograd.grad(plain, f_noise)[0]
        )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck(reduction):
    # gamma = 1 (and state=None): the surrogate's gradient is the derivative of its value
    f_data = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    f_noise = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    log_q = torch.randn(5, generator=gen, dtype=torch.float64)
    state = CompositionalState(1.0)
    for s in (state, None):
        assert torch.autograd.gradcheck(
            lambda a, b, s=s: compositional_nll(a, b, s, log_noise=log_q, reduction=reduction),
            (f_data, f_noise),
        )


def test_reductions():
    state = CompositionalState(0.5)
    f_data, f_noise, log_q = batches(steps=1)[0]
    f_data = f_data.view(5, 1).expand(5, 2)
    per = compositional_nll(f_data, f_noise, state, log_noise=log_q, reduction="none")
    assert per.shape == (5, 2)
    log_u = state.log_partition()
    torch.testing.assert_close(per, log_u - f_data)
    state.reset()
    total = compositional_nll(f_data, f_noise, state, log_noise=log_q, reduction="sum")
    torch.testing.assert_close(total, per.sum())
    # an empty data batch: the mean is 0, the state still moves
    empty = compositional_nll(torch.zeros(0, dtype=torch.float64), f_noise, state, log_noise=log_q)
    assert empty.item() == 0.0 and state.steps.item() == 2


@settings(max_examples=25, deadline=None)
@given(shift=st.floats(-50.0, 50.0), seed=st.integers(0, 2**16))
def test_plain_estimator_is_invariant_to_a_constant_in_f(shift, seed):
    # p = e^f / Z does not change when f gains a constant: neither does the NLL nor its gradient
    g = torch.Generator().manual_seed(seed)
    f_data = torch.randn(4, generator=g, dtype=torch.float64)
    f_noise = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    log_q = torch.randn(6, generator=g, dtype=torch.float64)
    base = compositional_nll(f_data, f_noise, log_noise=log_q)
    moved = compositional_nll(f_data + shift, f_noise + shift, log_noise=log_q)
    torch.testing.assert_close(moved, base, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(moved, f_noise)[0], torch.autograd.grad(base, f_noise)[0]
    )
    # a uniform noise density only shifts the value (log q = 0 by default)
    shifted_q = compositional_nll(f_data, f_noise, log_noise=float(shift))
    torch.testing.assert_close(shifted_q, compositional_nll(f_data, f_noise) - shift)


# --- the paper's toy: 1-D Gaussian with Gaussian noise, log Z known ----------------------------


def test_u_tracks_the_partition_function_of_a_gaussian():
    # f(z) = -(z - mu)^2 / 2, q = N(0, s^2): Z = sqrt(2 pi). Each u_t is a convex combination
    # of unbiased batch means b_k (u_1 = b_1), so E[u_t] = Z and
    # Var[u_t] = Var[b] sum_k w_k^2 with Var[b] = rho Z^2 / m (rho from the reference).
    mu, s, m, gamma = 1.0, 2.0, 256, 0.1
    rho = ref.gaussian_ratio_relative_variance(mu, s)
    g = torch.Generator().manual_seed(0)
    state = CompositionalState(gamma)
    squares = 0.0  # sum of the squared weights of b_1..b_t in u_t
    for t in range(1, 201):
        z, log_q = gaussian_noise(m, s, g)
        compositional_nll(torch.zeros(1), -((z - mu) ** 2) / 2, state, log_noise=log_q)
        squares = 1.0 if t == 1 else (1 - gamma) ** 2 * squares + gamma**2
        if t in (1, 10, 50, 200):
            sd = math.sqrt(rho / m * squares)
            rel = state.log_partition().exp().item() / math.sqrt(2 * math.pi) - 1
            assert abs(rel) < 4 * sd, (t, rel, sd)  # 4 sd; sd is 0.01-0.04 here
    # after a jump of c in f (Z -> Z e^c) the mean of u_t moves by the weight of the new batches
    c = 1.0
    for _ in range(30):
        z, log_q = gaussian_noise(m, s, g)
        compositional_nll(torch.zeros(1), -((z - mu) ** 2) / 2 + c, state, log_noise=log_q)
    lag = (1 - gamma) ** 30
    expected = math.log(math.sqrt(2 * math.pi) * (lag + (1 - lag) * math.e**c))
    assert abs(state.log_partition().item() - expected) < 0.05  # ~4 sd of log u_t


def test_moving_average_removes_the_bias_of_the_minibatch_log():
    # Jensen: E[log b] < log Z for the plain estimator with m = 4 noise samples (bias about
    # -rho / (2 m)); the moving average with gamma = 0.02 averages ~100 batches before the log
    mu, s, m = 1.0, 2.0, 4
    rho = ref.gaussian_ratio_relative_variance(mu, s)
    g = torch.Generator().manual_seed(1)
    state = CompositionalState(0.02)
    plain, smoothed = [], []
    for t in range(1500):
        z, log_q = gaussian_noise(m, s, g)
        f_noise = -((z - mu) ** 2) / 2
        plain.append(compositional_nll(torch.zeros(1), f_noise, log_noise=log_q).item())
        compositional_nll(torch.zeros(1), f_noise, state, log_noise=log_q)
        if t >= 300:
            smoothed.append(state.log_partition().item())
    bias_plain = np.mean(plain) - LOG_SQRT_2PI
    bias_smoothed = np.mean(smoothed) - LOG_SQRT_2PI
    assert bias_plain < -rho / (4 * m)  # clearly biased (expected about -rho / (2 m))
    assert abs(bias_smoothed) < abs(bias_plain) / 3


def test_sgd_recovers_the_gaussian_mean():
    # the paper's Gaussian mean estimation: data N(1.5, 1), model f(x) = -(x - mu)^2 / 2, noise
    # N(0, 2^2). The NLL is quadratic in mu with curvature 1, so SGD (lr 0.1) forgets the start
    # as 0.9^t (1e-14 by step 300) and fluctuates around 1.5 with variance lr / (2 - lr) times
    # the gradient variance (~0.02 measured); averaging the last 100 iterates brings the sd to
    # ~0.012 (40 seeds), so 0.06 is a 5 sd tolerance.
    mu_star, s, gamma = 1.5, 2.0, 0.1
    g = torch.Generator().manual_seed(2)
    mu = torch.zeros((), dtype=torch.float64, requires_grad=True)
    loss_fn = CompositionalNLLLoss(gamma)
    opt = torch.optim.SGD([mu], lr=0.1)
    tail = []
    for t in range(300):
        x = mu_star + torch.randn(128, generator=g, dtype=torch.float64)
        z, log_q = gaussian_noise(256, s, g)
        loss = loss_fn(-((x - mu) ** 2) / 2, -((z - mu) ** 2) / 2, log_q)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if t >= 200:
            tail.append(mu.item())
    assert abs(np.mean(tail) - mu_star) < 0.06
    # and log u_t is the model's log Z (independent of mu here)
    assert abs(loss_fn.state.log_partition().item() - LOG_SQRT_2PI) < 0.05


# --- numerics, dtypes, devices, state ----------------------------------------------------------


def test_log_space_state_survives_huge_f():
    # e^f overflows float32 (and float64) here; the log-space state and the bounded weights
    # e^{f - log q - log u} <= m / gamma keep loss and gradient finite
    state = CompositionalState(0.5)
    for shift in (1e3, 2e3):
        f_noise = (torch.randn(8, generator=gen) + shift).requires_grad_()
        f_data = torch.full((3,), shift)
        loss = compositional_nll(f_data, f_noise, state)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(f_noise.grad).all()
        # the weights sum to b_t / u_t: 1 on the first call, then at most 1 / gamma (here,
        # after a jump of e^1000, the old estimate is negligible and the sum is 1 / gamma = 2)
        assert math.isclose(f_noise.grad.sum().item(), 1.0 if shift == 1e3 else 2.0, rel_tol=1e-3)
    assert torch.isfinite(state.log_u)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_dtypes(dtype):
    f_data, f_noise, log_q = (t.float() for t in batches(steps=1)[0])
    fh = f_noise.to(dtype).requires_grad_()
    loss = compositional_nll(f_data.to(dtype), fh, CompositionalState(0.3), log_noise=log_q)
    assert loss.dtype == dtype
    expected = compositional_nll(
        f_data.to(dtype).float(), fh.detach().float(), CompositionalState(0.3), log_noise=log_q
    )
    torch.testing.assert_close(loss.float(), expected, atol=1e-2, rtol=1e-2)
    loss.backward()
    assert fh.grad.dtype == dtype and torch.isfinite(fh.grad).all()


def test_state_dict_round_trip_and_dtype_following():
    data = batches(steps=5)
    a = CompositionalState(0.25)
    for f_data, f_noise, log_q in data[:3]:
        compositional_nll(f_data.float(), f_noise.float(), a, log_noise=log_q.float())
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = CompositionalState(0.25)
    b.load_state_dict(torch.load(buffer))
    assert b.steps.item() == 3 and torch.equal(a.log_u, b.log_u)
    for f_data, f_noise, log_q in data[3:]:
        la = compositional_nll(f_data.float(), f_noise.float(), a, log_noise=log_q.float())
        lb = compositional_nll(f_data.float(), f_noise.float(), b, log_noise=log_q.float())
        assert torch.equal(la, lb)
    # float64 inputs promote the buffer; .to() moves it like any module buffer
    assert a.log_u.dtype == torch.float32
    compositional_nll(data[0][0], data[0][1], a)
    assert a.log_u.dtype == torch.float64
    assert CompositionalState(0.5).to(torch.float64).log_u.dtype == torch.float64
    module = CompositionalNLLLoss(0.1)
    assert set(module.state_dict()) == {"state.log_u", "state.steps"}
    assert "gamma=0.1" in repr(module)


def test_side_effect_and_call_order():
    # every call updates the state, even without gradients (documented); the loss of a call
    # uses the estimate that already includes its own batch
    state = CompositionalState(0.5)
    f_data, f_noise, _ = batches(steps=1)[0]
    with torch.no_grad():
        compositional_nll(f_data, f_noise, state)
    assert state.steps.item() == 1
    first = state.log_partition()
    loss = compositional_nll(f_data, f_noise + 1.0, state)
    expected = torch.logaddexp(first + math.log(0.5), first + 1.0 + math.log(0.5))
    torch.testing.assert_close(loss, -f_data.mean() + expected)
    state.reset()
    assert state.steps.item() == 0


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((torch.zeros(2), torch.zeros(0)), {}, ValueError, "at least one noise sample"),
        ((torch.zeros(2), torch.zeros(3), "state"), {}, TypeError, "state must be"),
        ((torch.zeros(2, dtype=torch.long), torch.zeros(3)), {}, TypeError, "f_data must be"),
        ((torch.zeros(2), torch.zeros(3, dtype=torch.long)), {}, TypeError, "f_noise must be"),
        ((torch.zeros(2), torch.zeros(3)), {"log_noise": torch.zeros(4)}, ValueError, "log_noise"),
        ((torch.zeros(2), torch.zeros(3)), {"log_noise": "q"}, TypeError, "log_noise"),
        ((torch.zeros(2), torch.zeros(3)), {"reduction": "avg"}, ValueError, "reduction must"),
    ],
)
def test_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        compositional_nll(*args, **kwargs)


@pytest.mark.parametrize("gamma, error", [(0.0, ValueError), (1.5, ValueError), ("a", TypeError)])
def test_gamma_errors(gamma, error):
    with pytest.raises(error, match="gamma"):
        CompositionalState(gamma)
    with pytest.raises(error, match="gamma"):
        CompositionalNLLLoss(gamma)
