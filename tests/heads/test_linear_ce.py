import pytest
import torch
import torch.nn.functional as F

from softmaxkit.heads import LinearCrossEntropy, linear_cross_entropy
from softmaxkit.heads.linear_ce import default_chunk_size

gen = torch.Generator().manual_seed(11)
N, D, V = 37, 19, 53
REDUCTIONS = ["mean", "sum", "none"]


def case(n=N, d=D, c=V, dtype=torch.float64, ignore=(3, 10, 11, 36)):
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    w = torch.randn(c, d, generator=gen, dtype=dtype) * 0.7
    b = torch.randn(c, generator=gen, dtype=dtype)
    y = torch.randint(0, c, (n,), generator=gen)
    for i in ignore:
        if i < n:
            y[i] = -100
    return x, w, b, y


def plain(
    x,
    w,
    y,
    *,
    b=None,
    weight=None,
    reduction="mean",
    ignore_index=-100,
    label_smoothing=0.0,
    softcap=None,
    logsumexp_penalty=0.0,
):
    """The plain computation: full logits, then torch's cross_entropy and the plain formulas."""
    z = F.linear(x, w, b)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z2 = z.reshape(-1, w.shape[0])
    t2 = y.reshape(-1, w.shape[0]) if y.dtype.is_floating_point else y.reshape(-1)
    loss = F.cross_entropy(
        z2,
        t2,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )
    if logsumexp_penalty:
        kept = (
            torch.ones(z2.shape[0], dtype=z.dtype)
            if y.dtype.is_floating_point
            else (t2 != ignore_index).to(z.dtype)
        )
        pen = logsumexp_penalty * torch.logsumexp(z2, 1) ** 2 * kept
        if reduction == "none":
            loss = loss + pen
        elif reduction == "sum":
            loss = loss + pen.sum()
        else:
            loss = loss + pen.sum() / kept.sum().clamp(min=1)
    if reduction == "none":
        loss = loss.reshape(y.shape[:-1] if y.dtype.is_floating_point else y.shape)
    return loss


def loss_and_grads(fn, x, w, b, reduction, cot=None):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    loss = fn(x, w, b)
    if cot is None:
        cot = (
            torch.randn(loss.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
            if reduction == "none"
            else torch.tensor(0.7, dtype=torch.float64)
        )
    params = [x, w] + ([b] if b is not None else [])
    grads = torch.autograd.grad(loss, params, cot.to(loss.dtype))
    return loss.detach(), grads


OPTIONS = {
    "plain": {},
    "bias": {"bias": True},
    "smoothing": {"label_smoothing": 0.2},
    "class_weight": {"weight": True},
    "weight_smoothing": {"weight": True, "label_smoothing": 0.3},
    "softcap": {"softcap": 2.5},
    "penalty": {"logsumexp_penalty": 0.05},
    "all": {
        "bias": True,
        "weight": True,
        "label_smoothing": 0.15,
        "softcap": 3.0,
        "logsumexp_penalty": 1e-2,
    },
}


def kwargs_of(opts):
    kw = dict(opts)
    use_bias = kw.pop("bias", False)
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(V, generator=gen, dtype=torch.float64) + 0.2
    return use_bias, kw


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk_size", [8, None])
def test_loss_and_gradients_match_plain(name, reduction, chunk_size):
    x, w, b, y = case()
    use_bias, kw = kwargs_of(OPTIONS[name])
    b = b if use_bias else None
    ours = loss_and_grads(
        lambda x, w, b: linear_cross_entropy(
            x, w, y, linear_bias=b, reduction=reduction, chunk_size=chunk_size, **kw
        ),
        x,
        w,
        b,
        reduction,
    )
    ref = loss_and_grads(
        lambda x, w, b: plain(x, w, y, b=b, reduction=reduction, **kw), x, w, b, reduction
    )
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-10, atol=1e-12)
    for g, r in zip(ours[1], ref[1]):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"label_smoothing": 0.2, "weight": True},
        {"softcap": 2.0, "logsumexp_penalty": 0.1, "bias": True},
    ],
)
def test_probability_targets_match_plain(reduction, opts):
    x, w, b, _ = case()
    t = torch.softmax(torch.randn(N, V, generator=gen, dtype=torch.float64) * 2, 1)
    use_bias, kw = kwargs_of(opts)
    b = b if use_bias else None
    ours = loss_and_grads(
        lambda x, w, b: linear_cross_entropy(
            x, w, t, linear_bias=b, reduction=reduction, chunk_size=10, **kw
        ),
        x,
        w,
        b,
        reduction,
    )
    ref = loss_and_grads(
        lambda x, w, b: plain(x, w, t, b=b, reduction=reduction, **kw), x, w, b, reduction
    )
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-10, atol=1e-12)
    for g, r in zip(ours[1], ref[1]):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_batched_input_shape(reduction):
    x, w, b, y = case(n=4 * 7)
    x3, y3 = x.reshape(4, 7, D), y.reshape(4, 7)
    ours = loss_and_grads(
        lambda x, w, b: linear_cross_entropy(
            x, w, y3, linear_bias=b, reduction=reduction, label_smoothing=0.1, chunk_size=5
        ),
        x3,
        w,
        b,
        reduction,
    )
    ref = loss_and_grads(
        lambda x, w, b: plain(x, w, y3, b=b, reduction=reduction, label_smoothing=0.1),
        x3,
        w,
        b,
        reduction,
    )
    assert ours[0].shape == ref[0].shape
    torch.testing.assert_close(ours[0], ref[0])
    for g, r in zip(ours[1], ref[1]):
        torch.testing.assert_close(g, r)


def test_chunk_size_does_not_change_the_result():
    x, w, b, y = case()
    results = [
        linear_cross_entropy(x, w, y, linear_bias=b, reduction="none", chunk_size=c)
        for c in (1, 5, 37, 1000)
    ]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-12, atol=1e-13)


def test_extras():
    x, w, b, y = case()
    z = 2.0 * torch.tanh(F.linear(x, w, b) / 2.0)
    loss, ex = linear_cross_entropy(
        x, w, y, linear_bias=b, softcap=2.0, return_extras=True, chunk_size=6
    )
    torch.testing.assert_close(ex.lse, torch.logsumexp(z, 1))
    assert torch.equal(ex.predicted, z.argmax(1))
    kept = y != -100
    acc = (z.argmax(1)[kept] == y[kept]).double().mean()
    torch.testing.assert_close(ex.accuracy, acc)
    # force some hits so the accuracy is not trivially 0
    y2 = torch.where(kept, z.argmax(1), y)
    y2[0] = (z[0].argmax() + 1) % V
    _, ex2 = linear_cross_entropy(x, w, y2, linear_bias=b, softcap=2.0, return_extras=True)
    torch.testing.assert_close(ex2.accuracy, ((kept.sum() - 1) / kept.sum()).double())
    assert not ex.lse.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_half_inputs_accumulate_in_float32(dtype, reduction):
    x, w, b, y = case(dtype=dtype)
    x64, w64, b64 = x.double(), w.double(), b.double()
    ours = loss_and_grads(
        lambda x, w, b: linear_cross_entropy(
            x, w, y, linear_bias=b, reduction=reduction, label_smoothing=0.1, chunk_size=8
        ),
        x,
        w,
        b,
        reduction,
    )
    assert ours[0].dtype == dtype and all(g.dtype == dtype for g in ours[1])
    f32 = loss_and_grads(
        lambda x, w, b: plain(
            x.float(), w.float(), y, b=b.float(), reduction=reduction, label_smoothing=0.1
        ),
        x,
        w,
        b,
        reduction,
    )
    tol = (
        {"rtol": 1.6e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 2e-3, "atol": 2e-3}
    )
    torch.testing.assert_close(ours[0].float(), f32[0].float(), **tol)
    for g, r in zip(ours[1], f32[1]):
        torch.testing.assert_close(g.float(), r.float(), **tol)
    # error against a float64 truth no worse than the plain low-precision computation's
    truth = loss_and_grads(
        lambda x, w, b: plain(x, w, y, b=b, reduction=reduction, label_smoothing=0.1),
        x64,
        w64,
        b64,
        reduction,
    )
    low = loss_and_grads(
        lambda x, w, b: plain(x, w, y, b=b, reduction=reduction, label_smoothing=0.1),
        x,
        w,
        b,
        reduction,
    )
    for o, lo, t in zip((ours[0], *ours[1]), (low[0], *low[1]), (truth[0], *truth[1])):
        err_ours = (o.double() - t).abs().max()
        err_low = (lo.double() - t).abs().max()
        assert err_ours <= err_low * 1.05 + 1e-3 * t.abs().max()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("which", ["x", "w", "b", "wb"])
def test_only_some_inputs_require_grad(reduction, which):
    x, w, b, y = case()
    xs = x.clone().requires_grad_("x" in which)
    ws = w.clone().requires_grad_("w" in which)
    bs = b.clone().requires_grad_("b" in which)
    loss = linear_cross_entropy(xs, ws, y, linear_bias=bs, reduction=reduction, chunk_size=7)
    loss.sum().backward()
    assert (xs.grad is not None) == ("x" in which)
    assert (ws.grad is not None) == ("w" in which)
    assert (bs.grad is not None) == ("b" in which)
    _, ref = loss_and_grads(
        lambda x, w, b: plain(x, w, y, b=b, reduction=reduction).sum(),
        x,
        w,
        b,
        "sum",
        torch.tensor(1.0, dtype=torch.float64),
    )
    for t, r in zip((xs, ws, bs), ref):
        if t.grad is not None:
            torch.testing.assert_close(t.grad, r)


def test_no_grad_skips_gradient_work():
    x, w, b, y = case()
    x.requires_grad_()
    with torch.no_grad():
        loss = linear_cross_entropy(x, w, y, linear_bias=b)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, plain(x.detach(), w, y, b=b))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_rows_ignored(reduction):
    x, w, b, _ = case()
    y = torch.full((N,), -100)
    wt = torch.rand(V, generator=gen, dtype=torch.float64)
    loss, grads = loss_and_grads(
        lambda x, w, b: linear_cross_entropy(
            x,
            w,
            y,
            linear_bias=b,
            weight=wt,
            reduction=reduction,
            label_smoothing=0.1,
            logsumexp_penalty=0.1,
        ),
        x,
        w,
        b,
        reduction,
    )
    assert torch.all(loss == 0)
    for g in grads:
        assert torch.all(g == 0)


def test_empty_batch():
    _, w, _, _ = case()
    x = torch.zeros(0, D, dtype=torch.float64, requires_grad=True)
    loss = linear_cross_entropy(x, w, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0 and x.grad.shape == (0, D)


def test_gradcheck_tiny():
    """gradcheck backpropagates several times through one call, which only "none" allows
    ("mean"/"sum" hand their forward-computed gradients to the first backward); their
    gradients are checked against torch's autograd above."""
    x, w, b, y = case(n=5, d=3, c=4, ignore=(1,))
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    wt = torch.rand(4, generator=gen, dtype=torch.float64) + 0.1
    for reduction in ["none"]:

        def fn(x, w, b, reduction=reduction):
            return linear_cross_entropy(
                x,
                w,
                y,
                linear_bias=b,
                weight=wt,
                reduction=reduction,
                label_smoothing=0.1,
                softcap=1.5,
                logsumexp_penalty=0.1,
                chunk_size=2,
            )

        assert torch.autograd.gradcheck(fn, (x, w, b))


def test_module_matches_functional_and_linear_state_dict():
    lin = torch.nn.Linear(D, V, bias=True, dtype=torch.float64)
    head = LinearCrossEntropy(
        D, V, bias=True, label_smoothing=0.1, softcap=5.0, dtype=torch.float64
    )
    head.load_state_dict(lin.state_dict())
    x, _, _, y = case()
    torch.testing.assert_close(
        head(x, y), plain(x, lin.weight, y, b=lin.bias, label_smoothing=0.1, softcap=5.0)
    )
    loss, extras = head(x, y, return_extras=True)
    torch.testing.assert_close(extras.lse, torch.logsumexp(head.logits(x), 1))
    head(x, y).backward()
    assert head.weight.grad.shape == (V, D) and head.bias.grad.shape == (V,)
    assert "num_classes=53" in repr(head)


def test_default_chunk_size():
    assert default_chunk_size(10, 53, 19) == 10
    assert default_chunk_size(4096, 131072, 1024) == 256  # 128 MiB of logits
    assert default_chunk_size(10**6, 8192, 256) == 512  # the 16 MiB floor
    assert default_chunk_size(10**6, 131072, 8192) == 512  # the 256 MiB cap
    assert default_chunk_size(10**6, 2**25, 4, torch.float64) == 1


def test_torch_compile():
    """Both paths (gradients in forward for "mean", recompute in backward for "none")
    in one compiled graph without graph breaks."""
    x, w, b, y = case()
    wt = torch.rand(V, generator=gen, dtype=torch.float64) + 0.2
    r = torch.randn(N, generator=gen, dtype=torch.float64)
    kw = {"weight": wt, "label_smoothing": 0.1, "softcap": 3.0, "logsumexp_penalty": 0.01}

    def fn(x, w, b, f=linear_cross_entropy):
        mean = f(x, w, y, linear_bias=b, chunk_size=19, **kw)
        none = f(x, w, y, linear_bias=b, reduction="none", chunk_size=19, **kw)
        return mean + (none * r).sum()

    def ref(x, w, b):
        return plain(x, w, y, b=b, **kw) + (plain(x, w, y, b=b, reduction="none", **kw) * r).sum()

    compiled = torch.compile(fn, fullgraph=True)
    ours = loss_and_grads(compiled, x, w, b, "mean")
    expected = loss_and_grads(ref, x, w, b, "mean")
    torch.testing.assert_close(ours[0], expected[0])
    for g, e in zip(ours[1], expected[1]):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"x": torch.randn(4, 5)}, ValueError, "input's last dimension must equal"),
        ({"w": torch.randn(7, 6, 1)}, ValueError, "linear_weight must have shape"),
        ({"w": torch.randn(7, 6, dtype=torch.float64)}, TypeError, "linear_weight must have"),
        ({"x": torch.randint(0, 3, (4, 6))}, TypeError, "input must be a floating-point"),
        (
            {"y": torch.tensor([0, 1, 7, 2])},
            ValueError,
            r"target must hold class indices in "
            r"\[0, 6\].*got 7",
        ),
        ({"y": torch.tensor([0, 1, -2, 2])}, ValueError, "got -2"),
        ({"y": torch.zeros(4, 2, dtype=torch.long)}, ValueError, "target must have shape"),
        ({"y": torch.zeros(4, 5)}, ValueError, "probabilities of shape"),
        ({"y": torch.zeros(4, dtype=torch.bool)}, TypeError, "class indices"),
        ({"linear_bias": torch.zeros(6)}, ValueError, "linear_bias must have shape"),
        ({"weight": torch.zeros(6)}, ValueError, "weight .class weights. must have shape"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"label_smoothing": 1.5}, ValueError, "label_smoothing must be in"),
        ({"softcap": 0.0}, ValueError, "softcap must be in"),
        ({"logsumexp_penalty": -1.0}, ValueError, "logsumexp_penalty must be in"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be in"),
        ({"return_extras": 1}, TypeError, "return_extras must be a bool"),
    ],
)
def test_errors(kwargs, exc, match):
    kwargs = dict(kwargs)
    x = kwargs.pop("x", torch.randn(4, 6))
    w = kwargs.pop("w", torch.randn(7, 6))
    y = kwargs.pop("y", torch.tensor([0, 1, 6, -100]))
    with pytest.raises(exc, match=match):
        linear_cross_entropy(x, w, y, **kwargs)


def test_module_errors():
    with pytest.raises(ValueError, match="class_weight must have shape"):
        LinearCrossEntropy(4, 5, class_weight=torch.ones(3))
    with pytest.raises(ValueError, match="num_classes must be in"):
        LinearCrossEntropy(4, 0)


def test_int32_targets_and_half_extras():
    x, w, b, y = case(dtype=torch.bfloat16)
    loss, ex = linear_cross_entropy(x, w, y.to(torch.int32), linear_bias=b, return_extras=True)
    expected = plain(x.float(), w.float(), y, b=b.float())
    torch.testing.assert_close(loss.float(), expected, rtol=1.6e-2, atol=1e-2)
    assert ex.lse.dtype == torch.float32 and ex.predicted.dtype == torch.int64


def test_second_backward_of_a_mean_call_raises_but_none_works():
    x, w, b, y = case()
    w.requires_grad_()
    loss = linear_cross_entropy(x, w, y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()
    per_row = linear_cross_entropy(x, w, y, reduction="none").sum()
    (g1,) = torch.autograd.grad(per_row, w, retain_graph=True)
    (g2,) = torch.autograd.grad(per_row, w)
    torch.testing.assert_close(g1, g2)
