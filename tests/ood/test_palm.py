"""PALMLoss against the float64 transcription of the official loss (tests/reference/palm_ref.py),
its explicit prototype update, gradients, state, dtypes and edge cases."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from softmaxkit import ood
from tests.reference.palm_ref import palm_ref

TOL = {"atol": 1e-10, "rtol": 1e-10}

CONFIGS = [  # num_classes, cache_size, k, proto_m, views, batch, dim, options
    (3, 6, 5, 0.999, 2, 8, 8, {}),
    (4, 3, 0, 0.9, 2, 10, 5, {}),
    (2, 4, 2, 0.5, 1, 6, 16, {"temperature": 0.3, "lambda_pcon": 0.25}),
    (3, 6, 9, 0.99, 3, 7, 8, {"epsilon": 0.2, "sinkhorn_iterations": 1}),
    (5, 1, 5, 0.9, 2, 9, 4, {}),  # one prototype per class: no contrastive positives
    (3, 2, 1, 0.8, 2, 6, 6, {"sinkhorn_iterations": 0}),
]
REF_NAMES = {"temperature": "temp", "sinkhorn_iterations": "iterations"}


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def make(c, cache, k, m, options, seed=1, normalize=False):
    torch.manual_seed(seed)
    return ood.PALMLoss(
        c, options.pop("dim"), cache_size=cache, k=k, proto_m=m, normalize=normalize, **options
    ).double()


def setup(config, seed=0, normalize=False):
    c, cache, k, m, views, batch, dim, options = config
    crit = make(c, cache, k, m, {**options, "dim": dim}, normalize=normalize)
    crit.prototypes.copy_(F.normalize(crit.prototypes, dim=1))  # unit in float64
    feats = unit(batch, views, dim, seed=seed)
    labels = torch.randint(c, (batch,), generator=torch.Generator().manual_seed(seed + 1))
    ref_opts = {REF_NAMES.get(n, n): v for n, v in options.items()}
    ref_opts.update(num_classes=c, cache_size=cache, k=k, proto_m=m)
    return crit, feats, labels, ref_opts


def reference(feats, labels, protos, opts):
    f = feats.detach().clone().requires_grad_(True)
    loss, mle, pcon, new = palm_ref(f, labels, protos, **opts)
    (grad,) = torch.autograd.grad(loss, f)
    return (loss.detach(), mle.detach(), pcon.detach()), new, grad


def run(crit, feats, labels):
    f = feats.detach().clone().requires_grad_(True)
    out = crit(f, labels)
    (grad,) = torch.autograd.grad(out.loss, f)
    return out, grad


# ------------------------------------------------------------------ the reference


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c[:4]) for c in CONFIGS])
def test_equals_official_transcription(config):
    crit, feats, labels, opts = setup(config)
    values, new, grad = reference(feats, labels, crit.prototypes.clone(), opts)
    out, got_grad = run(crit, feats, labels)
    for a, b in zip(out, values):
        torch.testing.assert_close(a.detach(), b, **TOL)
    torch.testing.assert_close(crit.prototypes, new, **TOL)  # the EMA update
    torch.testing.assert_close(got_grad, grad, **TOL)


def test_several_steps_carry_the_prototypes():
    crit, _, _, opts = setup(CONFIGS[0])
    protos = crit.prototypes.clone()
    for step in range(4):
        feats = unit(8, 2, 8, seed=10 + step)
        labels = torch.randint(3, (8,), generator=torch.Generator().manual_seed(step))
        values, protos, grad = reference(feats, labels, protos, opts)
        out, got_grad = run(crit, feats, labels)
        torch.testing.assert_close(out.loss.detach(), values[0], **TOL)
        torch.testing.assert_close(crit.prototypes, protos, **TOL)
        torch.testing.assert_close(got_grad, grad, **TOL)


def test_sinkhorn_floor_regime_equals_official():
    """Features far from half of the prototypes (cosine about -1 against +1): the mass of
    those prototypes falls below 1e-12, where F.normalize's floor stops the official
    Sinkhorn from normalising them; the log-domain Sinkhorn keeps that floor."""
    crit, feats, labels, opts = setup(CONFIGS[0])
    axis = torch.zeros(8, dtype=torch.float64)
    axis[0] = 1.0
    sign = torch.where(torch.arange(18) % 2 == 0, 1.0, -1.0).double()[:, None]
    protos = F.normalize(sign * axis + 0.3 * unit(18, 8, seed=7), dim=1)
    crit.prototypes.copy_(protos)
    feats = F.normalize(axis + 0.3 * unit(8, 2, 8, seed=3), dim=-1)
    values, new, grad = reference(feats, labels, protos, opts)
    q = torch.exp(feats.reshape(-1, 8) @ protos.T / 0.05)
    assert ((q / q.sum()).sum(0) < 1e-12).any()  # the floor fires in the first sweep
    out, got_grad = run(crit, feats, labels)
    for a, b in zip(out, values):
        torch.testing.assert_close(a.detach(), b, **TOL)
    torch.testing.assert_close(crit.prototypes, new, **TOL)
    torch.testing.assert_close(got_grad, grad, **TOL)


def test_normalize_true_on_raw_features():
    """normalize=True on unnormalised rows: the official loss of the normalised rows, and
    the gradient through the normalisation (what reaches the projection head)."""
    crit, feats, labels, opts = setup(CONFIGS[0], normalize=True)
    raw = (feats * torch.linspace(0.5, 3.0, 8, dtype=torch.float64)[:, None, None]).detach()
    raw.requires_grad_(True)
    loss, mle, pcon, new = palm_ref(F.normalize(raw, dim=-1), labels, crit.prototypes, **opts)
    (grad,) = torch.autograd.grad(loss, raw)
    out, got_grad = run(crit, raw, labels)
    torch.testing.assert_close(out.loss.detach(), loss.detach(), **TOL)
    torch.testing.assert_close(crit.prototypes, new, **TOL)
    torch.testing.assert_close(got_grad, grad, **TOL)


def test_two_dim_features_are_one_view():
    crit, feats, labels, _ = setup(CONFIGS[0])
    twin = copy.deepcopy(crit)
    a = crit(feats[:, 0], labels)
    b = twin(feats[:, :1], labels)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    torch.testing.assert_close(crit.prototypes, twin.prototypes, **TOL)


def test_k_zero_is_all_of_the_class():
    crit, feats, labels, _ = setup(CONFIGS[0])
    crit.k = 0
    twin = copy.deepcopy(crit)
    twin.k = twin.cache_size
    torch.testing.assert_close(crit(feats, labels).loss, twin(feats, labels).loss, **TOL)
    torch.testing.assert_close(crit.prototypes, twin.prototypes, **TOL)


def test_k_is_clamped_to_cache_size():
    assert ood.PALMLoss(3, 4, cache_size=2, k=5).k == 2


# ---------------------------------------------------------- the explicit update


def test_eval_does_not_update_and_equals_proto_m_one():
    crit, feats, labels, opts = setup(CONFIGS[0])
    before = crit.prototypes.clone()
    crit.eval()
    values, _, grad = reference(feats, labels, before, {**opts, "proto_m": 1.0})
    out, got_grad = run(crit, feats, labels)
    assert torch.equal(crit.prototypes, before)
    for a, b in zip(out, values):
        torch.testing.assert_close(a.detach(), b, **TOL)
    torch.testing.assert_close(got_grad, grad, **TOL)
    assert not out.proto_contra.requires_grad  # no update, no path to the features


def test_update_prototypes_alone():
    crit, feats, labels, opts = setup(CONFIGS[1])
    _, new, _ = reference(feats, labels, crit.prototypes.clone(), opts)
    crit.eval()  # the explicit call updates in any mode
    f = feats.clone().requires_grad_(True)
    assert crit.update_prototypes(f, labels) is None
    torch.testing.assert_close(crit.prototypes, new, **TOL)
    assert not crit.prototypes.requires_grad


def test_prototypes_stay_unit_vectors_and_detached():
    crit, feats, labels, _ = setup(CONFIGS[0])
    for _ in range(3):
        crit(feats.clone().requires_grad_(True), labels).loss.backward()
    assert not crit.prototypes.requires_grad and crit.prototypes.grad_fn is None
    norms = crit.prototypes.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_one_class_batch():
    crit, feats, _, opts = setup(CONFIGS[0])
    labels = torch.full((8,), 1)
    before = crit.prototypes.clone()
    values, new, grad = reference(feats, labels, before, opts)
    out, got_grad = run(crit, feats, labels)
    torch.testing.assert_close(out.loss.detach(), values[0], **TOL)
    torch.testing.assert_close(got_grad, grad, **TOL)
    moved = (crit.prototypes - before).abs().amax(1) > 1e-12
    assert torch.equal(moved, crit.prototype_labels == 1)  # only class 1's prototypes move
    assert torch.isfinite(got_grad).all()


def test_empty_batch():
    crit, _, _, _ = setup(CONFIGS[0])
    before = crit.prototypes.clone()
    f = torch.zeros(0, 2, 8, dtype=torch.float64, requires_grad=True)
    out = crit(f, torch.zeros(0, dtype=torch.long))
    assert out.mle.item() == 0 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, crit.lambda_pcon * out.proto_contra)
    (grad,) = torch.autograd.grad(out.loss, f, allow_unused=True)
    assert grad is None or grad.numel() == 0
    assert torch.equal(crit.prototypes, before)
    crit.update_prototypes(f, torch.zeros(0, dtype=torch.long))
    assert torch.equal(crit.prototypes, before)


# ------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("config", CONFIGS[:3], ids=[str(c[:4]) for c in CONFIGS[:3]])
def test_gradcheck_with_the_stop_gradients_frozen(config, monkeypatch):
    """The official loss stops the gradient through the Sinkhorn assignment, the top-k and
    the MLE's (updated) prototypes, all of which depend on the features, so finite
    differences of the whole loss see them. With the assignment recorded at the base point
    and replayed, finite differences check the two differentiable paths: the MLE logits
    (eval mode: the prototypes fixed) and the prototype-contrastive loss through the EMA
    update (training mode). The training-mode gradient of the whole loss is compared with
    the reference's above."""
    crit, feats, labels, _ = setup(config)
    state = copy.deepcopy(crit.state_dict())
    assign = type(crit)._log_assignment
    recorded: list[torch.Tensor] = []

    def record(self, z, protos):
        recorded.append(assign(self, z, protos))
        return recorded[-1]

    monkeypatch.setattr(type(crit), "_log_assignment", record)
    crit(feats, labels)  # training: the assignments before and after the update
    crit.load_state_dict(state)
    crit.eval()
    crit(feats, labels)  # eval: the one assignment
    assert len(recorded) == 3
    replay = iter(())
    monkeypatch.setattr(type(crit), "_log_assignment", lambda self, z, protos: next(replay))

    def contra(f):
        nonlocal replay
        replay = iter(recorded[:2])
        crit.load_state_dict(state)
        return crit.train()(f, labels).proto_contra

    def mle(f):
        nonlocal replay
        replay = iter(recorded[2:])
        return crit.eval()(f, labels).loss

    f = feats.clone().requires_grad_(True)
    for fn in (contra, mle):
        assert torch.autograd.gradcheck(fn, (f,), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_gradient_reaches_features_through_the_ema_term():
    """The prototype-contrastive loss reaches the features only through (1 - m) U^T z."""
    crit, feats, labels, _ = setup(CONFIGS[1])
    f = feats.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(crit(f, labels).proto_contra, f)
    assert g.abs().max() > 0
    crit.eval()
    assert not crit(f, labels).proto_contra.requires_grad


# --------------------------------------------------------------------- state, dtypes


def test_state_dict_round_trip():
    crit, feats, labels, _ = setup(CONFIGS[0])
    crit(feats, labels)  # move the prototypes away from their initialisation
    buffer = io.BytesIO()
    torch.save(crit.state_dict(), buffer)
    assert set(crit.state_dict()) == {"prototypes"}
    torch.manual_seed(123)
    twin = ood.PALMLoss(3, 8, cache_size=6, k=5, normalize=False).double()
    assert not torch.equal(twin.prototypes, crit.prototypes)
    buffer.seek(0)
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(twin.prototypes, crit.prototypes)
    torch.testing.assert_close(twin(feats, labels).loss, crit(feats, labels).loss, **TOL)
    assert torch.equal(twin.prototypes, crit.prototypes)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    torch.manual_seed(0)
    crit = ood.PALMLoss(3, 8)
    twin = copy.deepcopy(crit)
    feats = unit(8, 2, 8).float()
    labels = torch.randint(3, (8,), generator=torch.Generator().manual_seed(1))
    low = feats.to(dtype).requires_grad_(True)
    out = crit(low, labels)
    assert all(t.dtype == dtype for t in out)
    assert crit.prototypes.dtype == torch.float32
    (g,) = torch.autograd.grad(out.loss, low)
    assert g.dtype == dtype and torch.isfinite(g).all()
    want = twin(low.detach().float(), labels)  # the same rounded inputs in float32
    torch.testing.assert_close(out.loss.float(), want.loss.to(dtype).float())
    torch.testing.assert_close(crit.prototypes, twin.prototypes, atol=1e-6, rtol=1e-6)


def test_module_dtype_float64():
    torch.manual_seed(0)
    crit = ood.PALMLoss(3, 8).double()
    out = crit(unit(4, 2, 8).float(), torch.tensor([0, 1, 2, 0]))
    assert out.loss.dtype == torch.float32  # computed in float64, returned as given
    assert crit.prototypes.dtype == torch.float64


def test_initial_prototypes_are_the_officials():
    torch.manual_seed(5)
    crit = ood.PALMLoss(4, 16, cache_size=3)
    torch.manual_seed(5)
    want = F.normalize(torch.rand(12, 16), dim=-1)
    assert torch.equal(crit.prototypes, want)
    assert torch.equal(crit.prototype_labels, torch.arange(12) % 4)


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"num_classes": 2.0}, TypeError, "num_classes"),
        ({"feat_dim": 0}, ValueError, "feat_dim"),
        ({"cache_size": 0}, ValueError, "cache_size"),
        ({"k": -1}, ValueError, "k"),
        ({"proto_m": -0.1}, ValueError, "proto_m"),
        ({"proto_m": 1.1}, ValueError, "proto_m"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"epsilon": 0.0}, ValueError, "epsilon"),
        ({"epsilon": float("inf")}, ValueError, "epsilon"),
        ({"sinkhorn_iterations": -1}, ValueError, "sinkhorn_iterations"),
        ({"lambda_pcon": -1.0}, ValueError, "lambda_pcon"),
        ({"normalize": "yes"}, TypeError, "normalize"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        ood.PALMLoss(**{"num_classes": 3, "feat_dim": 4, **kwargs})


@pytest.mark.parametrize(
    "features,labels,error,name",
    [
        (torch.zeros(4, 2, 5), torch.zeros(4, dtype=torch.long), ValueError, "features"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), ValueError, "features"),
        (torch.zeros(4, 2, 2, 4), torch.zeros(4, dtype=torch.long), ValueError, "features"),
        (
            torch.zeros(4, 4, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
            TypeError,
            "features",
        ),
        ([[0.0] * 4], torch.zeros(1, dtype=torch.long), TypeError, "features"),
        (torch.zeros(4, 4), torch.zeros(4), TypeError, "labels"),
        (torch.zeros(4, 4), torch.zeros(3, dtype=torch.long), ValueError, "labels"),
        (torch.zeros(4, 4), torch.full((4,), 3), ValueError, "labels"),
        (torch.zeros(4, 4), torch.full((4,), -1), ValueError, "labels"),
    ],
)
def test_bad_forward_arguments(features, labels, error, name):
    crit = ood.PALMLoss(3, 4)
    with pytest.raises(error, match=name):
        crit(features, labels)
    with pytest.raises(error, match=name):
        crit.update_prototypes(features, labels)


# ---------------------------------------------------------------- what PALM is for


def test_training_pulls_each_class_to_its_prototypes():
    """A few steps of PALM on a linear projection of separable blobs: the MLE loss falls
    and each sample's nearest prototype belongs to its own class (the paper's premise:
    class-wise mixtures of prototypes on the sphere)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 10, generator=g) * 3
    y = torch.randint(3, (96,), generator=g)
    x = centres[y] + torch.randn(96, 10, generator=g)
    torch.manual_seed(0)
    proj = torch.nn.Linear(10, 16)
    crit = ood.PALMLoss(3, 16, cache_size=4, k=3, proto_m=0.9)
    opt = torch.optim.SGD(proj.parameters(), lr=0.5)
    first = None
    for _ in range(30):
        views = torch.stack(
            [proj(x + 0.1 * torch.randn(x.shape, generator=g)) for _ in range(2)], 1
        )
        out = crit(views, y)
        first = out.mle.item() if first is None else first
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.mle.item() < 0.8 * first
    with torch.no_grad():
        z = F.normalize(proj(x), dim=-1)
        nearest = (z @ crit.prototypes.T).argmax(1)
    assert (crit.prototype_labels[nearest] == y).float().mean() > 0.95


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_order_does_not_matter(seed):
    """Sinkhorn, the top-k and the means are equivariant / invariant under a permutation of
    the samples (and of the views)."""
    crit, feats, labels, _ = setup(CONFIGS[0], seed=seed)
    twin = copy.deepcopy(crit)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(seed))
    a = crit(feats, labels)
    b = twin(feats[perm].flip(1), labels[perm])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(crit.prototypes, twin.prototypes, atol=1e-12, rtol=1e-12)
