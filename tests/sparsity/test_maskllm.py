"""MaskLLM learnable N:M masks: the float64 reference, gradients, dtypes, empty batches,
torch.compile, state_dict round trips, removal, errors and the miniature claim check."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from softmaxkit.sparsity import (
    NMMaskLearner,
    apply_nm_masks,
    is_nm_sparse,
    magnitude_nm_mask,
    nm_candidates,
    nm_soft_mask,
)
from tests.reference import maskllm_ref as ref

PATTERNS = [(2, 4), (1, 4)]


def exponentials(shape, seed, dtype=torch.float64):
    """The Exp(1) draws gumbel_softmax makes from a generator seeded with ``seed``."""
    return torch.empty(shape, dtype=dtype).exponential_(
        generator=torch.Generator().manual_seed(seed)
    )


def mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3)).to(dtype)


# ------------------------------------------------------------------ candidates and sampling


@pytest.mark.parametrize("n,m", PATTERNS)
def test_candidates_are_the_official_patterns_in_order(n, m):
    got = nm_candidates(n, m, dtype=torch.float64)
    np.testing.assert_array_equal(got.numpy(), ref.candidates(n, m))
    assert got.shape == (math.comb(m, n), m)


@pytest.mark.parametrize("n,m", PATTERNS)
@pytest.mark.parametrize("scale,tau", [(1e2, 4.0), (5e2, 0.05), (1.0, 1.0)])
def test_soft_mask_matches_reference(n, m, scale, tau):
    c = math.comb(m, n)
    logits = torch.randn(7, c, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    logits = logits * 0.01
    got = nm_soft_mask(
        logits, n, m, scale=scale, tau=tau, generator=torch.Generator().manual_seed(5)
    )
    noise = ref.gumbel_noise(exponentials((7, c), 5).numpy())
    expected = ref.soft_mask(logits.numpy(), noise, n, m, scale, tau)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    # a mixture of patterns with N ones: rows sum to N, entries in [0, 1]
    np.testing.assert_allclose(got.sum(-1).numpy(), n, rtol=1e-12)
    assert bool((got >= 0).all()) and bool((got <= 1).all())


def test_hard_sample_is_a_candidate_with_soft_gradient():
    logits = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    mask = nm_soft_mask(logits, hard=True, generator=torch.Generator().manual_seed(0))
    assert bool(is_nm_sparse(mask.detach().bool()))
    (mask * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("n,m", PATTERNS)
def test_gradcheck_through_the_soft_mask(n, m):
    logits = torch.randn(3, math.comb(m, n), dtype=torch.float64, requires_grad=True)

    def fn(z):
        g = torch.Generator().manual_seed(11)
        return nm_soft_mask(z, n, m, scale=2.0, tau=1.5, generator=g)

    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_soft_mask_half_precision(dtype):
    logits = torch.randn(9, 6, generator=torch.Generator().manual_seed(1)) * 0.01
    wide = nm_soft_mask(logits.double(), generator=torch.Generator().manual_seed(2))
    got = nm_soft_mask(logits.to(dtype), generator=torch.Generator().manual_seed(2))
    assert got.dtype == dtype
    # the logits are rounded to `dtype` before the (scale 100) multiplication
    expected = nm_soft_mask(logits.to(dtype).double(), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(got.double(), expected, atol=1e-2, rtol=1e-2)
    assert wide.shape == got.shape


def test_soft_mask_empty():
    z = torch.zeros(0, 6, requires_grad=True)
    out = nm_soft_mask(z)
    assert out.shape == (0, 4)
    out.sum().backward()
    assert z.grad.shape == (0, 6)


# ----------------------------------------------------------------------- magnitude / check


def test_magnitude_mask_matches_reference_with_ties():
    w = torch.randn(6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w[0, :4] = torch.tensor([1.0, -1.0, 1.0, 0.5], dtype=torch.float64)  # a tie
    for n, m in PATTERNS:
        got = magnitude_nm_mask(w, n, m)
        np.testing.assert_array_equal(got.numpy(), ref.magnitude_mask(w.numpy(), n, m))
        assert bool(is_nm_sparse(got, n, m))


def test_is_nm_sparse():
    ok = torch.tensor([[True, False, True, False, False, False, True, True]])
    assert bool(is_nm_sparse(ok))
    assert not bool(is_nm_sparse(torch.ones(1, 4, dtype=torch.bool)))
    assert not bool(is_nm_sparse(torch.tensor([[True, False, False, False]])))  # 1 of 4 != 2
    assert bool(is_nm_sparse(torch.tensor([[0.0, 3.0, 0.0, 0.0]])))  # weights: at most N
    assert not bool(is_nm_sparse(torch.tensor([[1.0, 3.0, 2.0, 0.0]])))
    assert bool(is_nm_sparse(torch.zeros(0, 8, dtype=torch.bool)))


# ------------------------------------------------------------------------------ the learner


@pytest.mark.parametrize("n,m", PATTERNS)
def test_prior_initialisation_matches_reference(n, m):
    model = nn.Linear(8, 3).double()
    learner = apply_nm_masks(model, n, m, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    init = torch.empty(3 * 8 // m, math.comb(m, n)).normal_(0, 0.01, generator=g).double()
    prior = ref.magnitude_mask(model.parametrizations.weight.original.detach().numpy(), n, m)
    expected = ref.prior_init(init.numpy(), prior, n, m, 3.0)
    np.testing.assert_allclose(learner.masks[0].gate.detach().numpy(), expected, rtol=1e-12)
    # the prior only biases the logits by (overlap - 1) * 3 std: on a larger layer most
    # groups (not all: the N(0, 0.01^2) init competes) start at the magnitude pattern
    big = nn.Linear(64, 64)
    learner = apply_nm_masks(big, n, m, generator=torch.Generator().manual_seed(0))
    agree = learner.hard_masks()[""] == magnitude_nm_mask(
        big.parametrizations.weight.original, n, m
    )
    assert agree.reshape(-1, m).all(-1).float().mean() > 0.6


def test_schedules_are_linear_and_clamped():
    learner = apply_nm_masks(mlp(), total_steps=10)
    for t in range(13):
        tt = min(t, 10)
        assert learner.iteration == t
        assert learner.scale == pytest.approx(ref.linear(1e2, 5e2, tt, 10))
        assert learner.temperature == pytest.approx(ref.linear(4.0, 0.05, tt, 10))
        assert learner.reg_weight == pytest.approx(1e-5 * (1 - tt / 10))
        learner.step()


def test_training_forward_and_regulariser_match_reference():
    model = mlp()
    gen = torch.Generator().manual_seed(9)
    learner = apply_nm_masks(model, total_steps=4, weight_reg=1e-2, generator=gen)
    for _ in range(2):
        learner.step()
    state = gen.get_state()
    x = torch.randn(5, 8, dtype=torch.float64)
    out = model.train()(x)
    # the same draws, in the order the layers are used
    replay = torch.Generator()
    replay.set_state(state)
    weights, masks = [], []
    h = x.numpy()
    for i, layer in enumerate((model[0], model[2])):
        gate = learner.masks[i].gate.detach()
        noise = ref.gumbel_noise(
            torch.empty(gate.shape, dtype=torch.float64).exponential_(generator=replay).numpy()
        )
        scale, tau = ref.linear(1e2, 5e2, 2, 4), ref.linear(4.0, 0.05, 2, 4)
        # (reading layer.weight in training mode would draw a new mask: use the stored shape)
        shape = learner.masks[i].shape
        mk = ref.soft_mask(gate.numpy(), noise, 2, 4, scale, tau).reshape(shape)
        w = layer.parametrizations.weight.original.detach().numpy()
        weights.append(w)
        masks.append(mk)
        h = h @ (w * mk).T + layer.bias.detach().numpy()
        if i == 0:
            h = np.maximum(h, 0)
    np.testing.assert_allclose(out.detach().numpy(), h, rtol=1e-10, atol=1e-12)
    reg = learner.regularizer()
    assert float(reg.detach()) == pytest.approx(
        ref.regularizer(weights, masks, 1e-2, 2, 4), rel=1e-10
    )
    # W is detached in the regulariser and frozen: only the logits get gradients
    (out.sum() + reg).backward()
    assert all(p.grad is not None for p in learner.parameters())
    assert model[0].parametrizations.weight.original.grad is None


def test_eval_uses_the_argmax_candidate_and_export_is_exact_nm():
    model = mlp()
    learner = apply_nm_masks(model, 1, 4, prior=None, generator=torch.Generator().manual_seed(0))
    model.eval()
    masks, weights = learner.export()
    for i, name in zip((0, 2), ("0", "2")):
        gate = learner.masks[i // 2].gate.detach().numpy()
        expected = ref.hard_mask(gate, 1, 4).reshape(model[i].weight.shape)
        np.testing.assert_array_equal(masks[name].numpy(), expected.astype(bool))
        assert bool(is_nm_sparse(masks[name], 1, 4)) and bool(is_nm_sparse(weights[name], 1, 4))
        torch.testing.assert_close(model[i].weight, weights[name])


def test_training_changes_only_the_masks_and_respects_nm():
    model = mlp()
    before = {k: t.clone() for k, t in model.state_dict().items()}
    learner = apply_nm_masks(model, total_steps=5, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(learner.parameters(), lr=0.1)
    x, y = torch.randn(16, 8, dtype=torch.float64), torch.randint(0, 3, (16,))
    for _ in range(5):
        loss = F.cross_entropy(model(x), y) + learner.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        learner.step()
    masks, _ = learner.export()
    assert all(bool(is_nm_sparse(mk)) for mk in masks.values())
    learner.remove()
    for k, t in model.state_dict().items():
        torch.testing.assert_close(t, before[k], rtol=0, atol=0)
    assert all(p.requires_grad for p in model.parameters())


def test_unfrozen_weights_get_gradients():
    model = mlp()
    learner = apply_nm_masks(model, freeze_weights=False)
    model(torch.randn(4, 8, dtype=torch.float64)).sum().backward()
    assert model[0].parametrizations.weight.original.grad is not None
    learner.remove()


def test_remove_restores_or_applies():
    model = mlp()
    x = torch.randn(4, 8, dtype=torch.float64)
    dense = model(x)
    learner = apply_nm_masks(model, layers=["2"], generator=torch.Generator().manual_seed(0))
    assert list(learner.names) == ["2"]
    masks, weights = learner.export()
    learner.remove()
    assert isinstance(model[2].weight, nn.Parameter)
    torch.testing.assert_close(model(x), dense, rtol=0, atol=0)
    learner = apply_nm_masks(
        model,
        layers=lambda name, mod: mod.out_features == 3,
        generator=torch.Generator().manual_seed(0),  # the same logits as the first
    )
    learner.remove(apply_masks=True)
    torch.testing.assert_close(model[2].weight, weights["2"])
    assert bool(is_nm_sparse(model[2].weight))


def test_state_dict_round_trip():
    model = mlp()
    learner = apply_nm_masks(model, total_steps=7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for mk in learner.masks:
            mk.gate.normal_()
    learner.step()
    learner.step()
    x = torch.randn(4, 8, dtype=torch.float64)
    expected = model.eval()(x)
    model_state, learner_state = model.state_dict(), learner.state_dict()

    other = mlp(seed=1)
    other_learner = apply_nm_masks(other, total_steps=7, prior=None)
    other.load_state_dict(model_state)
    torch.testing.assert_close(other.eval()(x), expected, rtol=0, atol=0)
    third = mlp(seed=2)
    third_learner = apply_nm_masks(third, total_steps=7, prior=None)
    third_learner.load_state_dict(learner_state)
    assert third_learner.iteration == 2
    for a, b in zip(third_learner.masks, learner.masks):
        torch.testing.assert_close(a.gate, b.gate, rtol=0, atol=0)
    assert other_learner.iteration == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model(dtype):
    wide = mlp(dtype=torch.float32)
    low = mlp(dtype=torch.float32).to(dtype)
    low.load_state_dict({k: t.to(dtype) for k, t in wide.state_dict().items()})
    lw = apply_nm_masks(wide, prior=None, generator=torch.Generator().manual_seed(0))
    ll = apply_nm_masks(low, prior=None, generator=torch.Generator().manual_seed(0))
    assert ll.masks[0].gate.dtype == torch.float32  # the logits stay in float32 (official)
    x = torch.randn(6, 8)
    for mode in ("train", "eval"):
        getattr(wide, mode)()
        getattr(low, mode)()
        for a, b in zip(lw.masks, ll.masks):  # same noise in both
            a.schedule.generator = torch.Generator().manual_seed(3)
            b.schedule.generator = torch.Generator().manual_seed(3)
        out = low(x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), wide(x), atol=5e-2, rtol=5e-2)
    low.train()
    out = low(x.to(dtype))
    (out.float().sum() + ll.regularizer()).backward()
    assert all(torch.isfinite(p.grad).all() for p in ll.parameters())


def test_empty_batch():
    model = mlp()
    learner = apply_nm_masks(model)
    out = model(torch.zeros(0, 8, dtype=torch.float64))
    assert out.shape == (0, 3)
    (out.sum() + 0 * learner.regularizer()).backward()
    for p in learner.parameters():
        assert p.grad is not None and torch.all(p.grad == 0)


def test_torch_compile_cpu():
    torch._dynamo.reset()
    model = mlp(dtype=torch.float32)
    learner = apply_nm_masks(model, prior="magnitude")
    x = torch.randn(5, 8)
    model.eval()
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))
    model.train()
    out = compiled(x)
    (out.sum() + learner.regularizer()).backward()
    assert all(torch.isfinite(p.grad).all() for p in learner.parameters())
    learner.remove()


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("n,m", [(3, 4), (2, 8), (1, 2), (4, 4)])
def test_unsupported_patterns(n, m):
    with pytest.raises(ValueError, match="n:m"):
        apply_nm_masks(mlp(), n, m)
    with pytest.raises(ValueError, match="n:m"):
        nm_candidates(n, m)


def test_errors_name_the_argument():
    bad_in = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(ValueError, match=r"layer '0'.*in_features=6"):
        apply_nm_masks(bad_in)
    with pytest.raises(ValueError, match=r"temperature_range\[1\]"):
        apply_nm_masks(mlp(), temperature_range=(4.0, 0.0))
    with pytest.raises(ValueError, match=r"temperature_range\[0\]"):
        apply_nm_masks(mlp(), temperature_range=(-1.0, 0.1))
    with pytest.raises(ValueError, match=r"scale_range\[0\]"):
        apply_nm_masks(mlp(), scale_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="tau"):
        nm_soft_mask(torch.zeros(2, 6), tau=0.0)
    with pytest.raises(ValueError, match="logits"):
        nm_soft_mask(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="prior"):
        apply_nm_masks(mlp(), prior="wanda")
    with pytest.raises(ValueError, match="prior"):
        apply_nm_masks(nn.Linear(8, 2), prior=torch.ones(3, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="layers"):
        apply_nm_masks(mlp(), layers=["5"])
    with pytest.raises(ValueError, match="weight_reg"):
        apply_nm_masks(mlp(), weight_reg=-1.0)
    with pytest.raises(ValueError, match="total_steps"):
        apply_nm_masks(mlp(), total_steps=0)
    with pytest.raises(TypeError, match="model"):
        NMMaskLearner("not a model")
    with pytest.raises(ValueError, match="weight"):
        magnitude_nm_mask(torch.zeros(2, 6))
    model = mlp()
    apply_nm_masks(model)
    with pytest.raises(ValueError, match="already parametrized"):
        apply_nm_masks(model)


# ----------------------------------------------------------------------- claim (miniature)


def test_claim_miniature():
    """A seconds-long run of examples/maskllm_claim.py: the learned 2:4 mask loses less test
    loss than magnitude 2:4 pruning (the full example reports several seeds)."""
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn (the digits data) is not installed")
    path = Path(__file__).resolve().parents[2] / "examples" / "maskllm_claim.py"
    spec = importlib.util.spec_from_file_location("maskllm_claim", path)
    claim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claim)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster, far more so on a busy CPU
    try:
        (row,) = claim.run(seeds=(0,), epochs=8, steps=80, lr=3e-3, hidden=32)
    finally:
        torch.set_num_threads(threads)
    assert row["learned"][1] < row["magnitude"][1]
    assert row["learned"][0] >= row["magnitude"][0] - 0.01
