"""The cross-entropy rules of ``softmaxkit._ops.cross_entropy`` against torch, in float64.

The rules are driven through :func:`linear_chunks` with an identity "weight", so the
chunk's logits are exactly the given logits ``z`` and ``grad_x`` is the logit gradient.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from softmaxkit._ops import cross_entropy as ce

gen = torch.Generator().manual_seed(5)
N, V = 23, 11
DT = torch.float64
REDUCTIONS = ["mean", "sum", "none"]


def logits(n=N, v=V):
    return torch.randn(n, v, generator=gen, dtype=DT) * 3


def index_target(n=N, v=V, ignore=(2, 7, 8)):
    y = torch.randint(0, v, (n,), generator=gen)
    for i in ignore:
        y[i] = -100
    return y


def reference(z, y, *, weight=None, reduction, label_smoothing, softcap, penalty):
    """torch's cross_entropy of the soft-capped logits plus the PaLM penalty c lse^2."""
    s = z if softcap is None else softcap * torch.tanh(z / softcap)
    loss = F.cross_entropy(
        s, y, weight=weight, reduction=reduction, label_smoothing=label_smoothing
    )
    if penalty:
        kept = torch.ones(z.shape[0], dtype=DT) if y.dtype.is_floating_point else (y != -100).to(DT)
        pen = penalty * torch.logsumexp(s, 1) ** 2 * kept
        if reduction == "none":
            loss = loss + pen
        elif reduction == "sum":
            loss = loss + pen.sum()
        else:
            loss = loss + pen.sum() / kept.sum().clamp(min=1)
    return loss


def ours(z, y, *, weight=None, upstream, chunk_size=4, **opts):
    """Loss and logit gradient (scaled by ``upstream``) from the shared rules."""
    probs = y.dtype.is_floating_point
    o = ce.CrossEntropyOptions(chunk_size=chunk_size, probs=probs, vocab_total=z.shape[1], **opts)
    if probs:
        targets = ce.prob_targets(y, weight, DT)
    else:
        kept = y != o.ignore_index
        targets = ce.index_targets(torch.where(kept, y, 0), kept, weight, DT)
    eye = torch.eye(z.shape[1], dtype=DT)
    needs = (True, False, False)
    fwd = ce.linear_chunks(z, eye, None, targets, o, needs=needs)
    if o.reduction == "none":
        grad = ce.linear_chunks(z, eye, None, targets, o, needs=needs, grad=upstream, lse=fwd.lse)
        return fwd.loss, grad.grad_x
    return fwd.loss, fwd.grad_x * upstream


def check(z, y, reduction, weight=None, **opts):
    ref_in = z.clone().requires_grad_()
    kw = {
        "label_smoothing": opts.get("label_smoothing", 0.0),
        "softcap": opts.get("softcap"),
        "penalty": opts.get("logsumexp_penalty", 0.0),
    }
    expected = reference(ref_in, y, weight=weight, reduction=reduction, **kw)
    upstream = (
        torch.randn(expected.shape, generator=gen, dtype=DT)
        if reduction == "none"
        else torch.tensor(0.7, dtype=DT)
    )
    (expected_grad,) = torch.autograd.grad(expected, ref_in, upstream)
    loss, grad = ours(z, y, weight=weight, upstream=upstream, reduction=reduction, **opts)
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(grad, expected_grad)


ALL_ON = {"label_smoothing": 0.2, "softcap": 4.0, "logsumexp_penalty": 0.05}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk_size", [1, 4, 100])
def test_every_option_at_once(reduction, chunk_size):
    weight = torch.rand(V, generator=gen, dtype=DT) + 0.1
    z, y = logits(), index_target()
    check(z, y, reduction, weight=weight, chunk_size=chunk_size, **ALL_ON)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"label_smoothing": 0.3},
        {"softcap": 2.5},
        {"logsumexp_penalty": 0.1},
        {"label_smoothing": 1.0},
    ],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_each_option_alone(reduction, opts, weighted):
    weight = torch.rand(V, generator=gen, dtype=DT) + 0.1 if weighted else None
    check(logits(), index_target(), reduction, weight=weight, **opts)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", [{}, ALL_ON])
@pytest.mark.parametrize("weighted", [False, True])
def test_probability_targets(reduction, opts, weighted):
    weight = torch.rand(V, generator=gen, dtype=DT) + 0.1 if weighted else None
    t = torch.rand(N, V, generator=gen, dtype=DT).softmax(1)
    check(logits(), t, reduction, weight=weight, **opts)


def test_ignore_index_other_than_default():
    z = logits()
    y = torch.randint(0, V, (N,), generator=gen)
    y[[0, 5]] = 3
    ref = F.cross_entropy(z, y, ignore_index=3, label_smoothing=0.1)
    loss, _ = ours(z, y, upstream=1.0, ignore_index=3, label_smoothing=0.1)
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_rows_ignored(reduction):
    z = logits(5)
    y = torch.full((5,), -100)
    g = torch.ones(5, dtype=DT) if reduction == "none" else 1.0
    loss, grad = ours(z, y, upstream=g, reduction=reduction, **ALL_ON)
    assert torch.all(loss == 0) and torch.all(grad == 0)  # torch's "mean" gives NaN here


def test_zero_class_weights_of_kept_rows_give_zero_mean():
    z, y = logits(4), torch.tensor([0, 1, 0, 1])
    weight = torch.zeros(V, dtype=DT)
    loss, grad = ours(z, y, weight=weight, upstream=1.0)
    assert loss == 0 and torch.all(grad == 0)


def test_mean_denominators():
    y = torch.tensor([0, 2, -100, 2])
    kept = y != -100
    weight = torch.tensor([0.5, 1.0, 2.0] + [1.0] * (V - 3), dtype=DT)
    o = ce.CrossEntropyOptions(reduction="mean")
    targets = ce.index_targets(torch.where(kept, y, 0), kept, weight, DT)
    D, n = ce.mean_denominators(targets, 4, DT, o)
    assert D.item() == 4.5 and n.item() == 3
    D, n = ce.mean_denominators(targets, 4, DT, ce.CrossEntropyOptions(reduction="sum"))
    assert D.item() == 1 and n.item() == 1


def test_gradient_written_in_place_into_the_exp_buffer():
    z, y = logits(6), index_target(6, ignore=(1,))
    kept = y != -100
    o = ce.CrossEntropyOptions(label_smoothing=0.1, vocab_total=V)
    targets = ce.index_targets(torch.where(kept, y, 0), kept, None, DT)
    blk = ce.block(targets, slice(None), V, o)
    e, stats = ce.block_statistics(z.clone(), blk, o)
    ptr = e.data_ptr()
    G = ce.logit_grad_(
        e,
        stats.sumexp.reciprocal(),
        stats.lse,
        blk,
        ce.Upstream(torch.ones(6, dtype=DT), torch.ones(6, dtype=DT)),
        o,
    )
    assert G.data_ptr() == ptr
    ref_in = z.clone().requires_grad_()
    F.cross_entropy(ref_in, y, label_smoothing=0.1, reduction="sum").backward()
    torch.testing.assert_close(G, ref_in.grad)


def test_row_loss_from_given_statistics_is_differentiable():
    """VQ-Logits' use: statistics computed by the caller, autograd through the rules."""
    z = logits(5).requires_grad_()
    y = torch.tensor([1, 4, -100, 0, 10])
    kept = y != -100
    o = ce.CrossEntropyOptions(vocab_total=V)
    targets = ce.index_targets(torch.where(kept, y, 0), kept, None, DT)
    index = targets.index
    stats = ce.RowStats(torch.logsumexp(z, 1), target_logit=z.gather(1, index[:, None])[:, 0])
    blk = ce.block(targets, slice(None), V, o)
    den = ce.mean_denominators(targets, 5, DT, o)
    loss = ce.reduce_loss(ce.row_loss(stats, blk, o), stats.lse, targets, den, o)
    torch.testing.assert_close(loss, F.cross_entropy(z, y))
    assert torch.autograd.gradcheck(
        lambda t: ce.reduce_loss(
            ce.row_loss(
                ce.RowStats(torch.logsumexp(t, 1), target_logit=t.gather(1, index[:, None])[:, 0]),
                blk,
                o,
            ),
            None,
            targets,
            den,
            o,
        ),
        (z,),
    )


def test_a_shard_owns_only_its_columns():
    """A block of columns [4, 8) of an 11-class vocabulary: the target column and the
    ownership follow vocab_start, and only owned rows read their target logit."""
    y = torch.tensor([0, 5, 7, 9, -100])
    kept = y != -100
    o = ce.CrossEntropyOptions(vocab_start=4, vocab_total=V)
    targets = ce.index_targets(torch.where(kept, y, 0), kept, None, DT)
    blk = ce.block(targets, slice(None), 4, o)
    assert blk.own.tolist() == [False, True, True, False, False]
    assert blk.column.tolist() == [0, 1, 3, 0, 0]


def test_options_are_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        ce.CrossEntropyOptions("mean")  # type: ignore[misc]
    o = ce.CrossEntropyOptions(label_smoothing=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.label_smoothing = 0.2  # type: ignore[misc]
    assert o.replace(softcap=3.0).softcap == 3.0 and o.classes(7) == 7


def test_default_chunk_size():
    assert ce.default_chunk_size(10, 53, 19) == 10
    assert ce.default_chunk_size(4096, 131072, 1024) == 256
    assert ce.default_chunk_size(10**6, 8192, 256) == 512
    assert ce.default_chunk_size(10**6, 131072, 8192) == 512
    assert ce.default_chunk_size(10**6, 2**25, 4, torch.float64) == 1
