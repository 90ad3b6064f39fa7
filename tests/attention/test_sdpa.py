"""scaled_dot_product_attention: the float64 reference, torch's SDPA, the blocked clipped
path's exact gradient, masks, fully masked rows, dtypes, empty inputs, compile, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import softmaxkit.attention.sdpa as sdpa_module
from softmaxkit.attention import scaled_dot_product_attention as sdpa
from tests.reference import attention_ref


def rand(*shape, seed=0, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


def qkv(B=(2, 3), L=7, S=9, E=5, Ev=4, dtype=torch.float64, scale=2.0):
    return (
        rand(*B, L, E, seed=1, dtype=dtype, scale=scale),
        rand(*B, S, E, seed=2, dtype=dtype, scale=scale),
        rand(*B, S, Ev, seed=3, dtype=dtype),
    )


def keep_mask(L=7, S=9, dead_row=2, seed=4):
    m = torch.rand(L, S, generator=torch.Generator().manual_seed(seed)) > 0.3
    if dead_row is not None:
        m[dead_row] = False
    return m


def naive(q, k, v, mask=None, causal=False, gamma=-0.025, zeta=1.0, quantizer=None):
    """The composition a user would write (scores, clipped softmax, matmul), NaN-free."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        L, S = s.shape[-2:]
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -math.inf)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask
    dead = (s == -math.inf).all(-1, keepdim=True)
    p = torch.softmax(s.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0)
    y = torch.clamp((zeta - gamma) * p + gamma, 0, 1)
    return (y if quantizer is None else quantizer(y)) @ v


def np64(t):
    return None if t is None else t.detach().to(torch.float64).numpy()


BLOCKS = [None, 2, 4, 100]  # whole rows (default), several key blocks, one partial, one


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize(
    "gamma,zeta", [(-0.025, 1.0), (-0.1, 1.1), (0.0, 1.0), (-0.3, 1.0), (0.0, 1.3)]
)
def test_clipped_equals_the_paper_formula(block_size, gamma, zeta):
    q, k, v = qkv()
    out = sdpa(q, k, v, softmax="clipped", gamma=gamma, zeta=zeta, block_size=block_size)
    ref = attention_ref.attention(np64(q), np64(k), np64(v), gamma=gamma, zeta=zeta)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("kind", ["bool", "float", "causal", "causal_wide", "causal_tall"])
def test_clipped_masks_equal_the_reference(block_size, kind):
    L, S = {"causal_wide": (5, 9), "causal_tall": (9, 5)}.get(kind, (7, 9))
    q, k, v = qkv(L=L, S=S)
    mask, causal = None, kind.startswith("causal")
    if kind == "bool":
        mask = keep_mask()
    elif kind == "float":
        mask = rand(3, 1, S, seed=9).masked_fill(torch.arange(S) == 3, -math.inf)
    out = sdpa(
        q,
        k,
        v,
        attn_mask=mask,
        is_causal=causal,
        softmax="clipped",
        gamma=-0.1,
        block_size=block_size,
    )
    ref = attention_ref.attention(
        np64(q),
        np64(k),
        np64(v),
        None if mask is None else mask.numpy(),
        causal=causal,
        gamma=-0.1,
    )
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12, rtol=1e-10)


def test_clipped_gives_exact_zeros_with_finite_logits():
    """The paper's point: with gamma < 0 small probabilities become exactly 0, so a query
    can attend exactly one key (here: the output equals that key's value)."""
    q = torch.tensor([[[10.0, 0.0]]], dtype=torch.float64)
    k = torch.tensor([[[10.0, 0.0], [0.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    v = torch.eye(3, dtype=torch.float64).unsqueeze(0)
    out = sdpa(q, k, v, softmax="clipped", gamma=-0.1, zeta=1.1)
    assert torch.equal(out, torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64))
    assert (sdpa(q, k, v)[0, 0, 1:] > 0).all()  # the plain softmax cannot


# ------------------------------------------------------------------ torch's own SDPA


@pytest.mark.parametrize("mask_kind", [None, "bool", "float", "causal"])
def test_softmax_calls_torch_sdpa(mask_kind):
    q, k, v = qkv(dtype=torch.float32)
    kw = {}
    if mask_kind == "bool":
        kw["attn_mask"] = keep_mask(dead_row=None)
    elif mask_kind == "float":
        kw["attn_mask"] = rand(7, 9, dtype=torch.float32)
    elif mask_kind == "causal":
        kw["is_causal"] = True
    assert torch.equal(sdpa(q, k, v, **kw), F.scaled_dot_product_attention(q, k, v, **kw))


@pytest.mark.parametrize("block_size", [None, 3])
@pytest.mark.parametrize("L,S", [(7, 9), (9, 5), (5, 5)])
def test_plain_softmax_through_the_blocked_path_equals_torch(block_size, L, S):
    """gamma = 0, zeta = 1 is the plain softmax: the blocked path (and its causal
    alignment) agrees with torch's SDPA, forward and backward."""
    q, k, v = (t.requires_grad_() for t in qkv(L=L, S=S))
    for causal in (False, True):
        ours = sdpa(q, k, v, is_causal=causal, softmax="clipped", gamma=0.0, block_size=block_size)
        theirs = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-10)
        g = rand(*ours.shape, seed=5)
        for a, b in zip(
            torch.autograd.grad(ours, (q, k, v), g), torch.autograd.grad(theirs, (q, k, v), g)
        ):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("block_size", [None, 2, 3])
@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal", "tall"])
def test_gradcheck_blocked_clipped(block_size, kind):
    L, S = (6, 4) if kind == "tall" else (5, 7)
    q, k, v = (t.requires_grad_() for t in qkv(B=(2,), L=L, S=S, E=3, Ev=2))
    mask, causal = None, kind in ("causal", "tall")
    if kind == "bool":
        mask = keep_mask(L, S, dead_row=1)
    inputs = (q, k, v)
    if kind == "float":
        mask = rand(1, L, S, seed=7).requires_grad_()
        inputs = (q, k, v, mask)

    def fn(*xs):
        m = xs[3] if len(xs) == 4 else mask
        return sdpa(
            xs[0],
            xs[1],
            xs[2],
            attn_mask=m,
            is_causal=causal,
            softmax="clipped",
            gamma=-0.1,
            zeta=1.05,
            block_size=block_size,
        )

    assert torch.autograd.gradcheck(fn, inputs, atol=1e-8)


@pytest.mark.parametrize("block_size", [None, 2])
def test_gradient_equals_the_naive_composition_with_inputs_on_the_bounds(block_size):
    """Rows with a single kept key have p = 1 exactly, so u = 1 with zeta = 1: the clip's
    gradient is inclusive there (torch.clamp's rule), as in the naive composition; other
    entries fall strictly outside [0, 1] (zero gradient through their own output)."""
    q, k, v = (t.requires_grad_() for t in qkv(B=(2,), L=6, S=8, scale=4.0))
    mask = keep_mask(6, 8, dead_row=0)
    mask[1] = False
    mask[1, 3] = True  # one key kept: p = 1
    for gamma, zeta in ((-0.2, 1.0), (0.0, 1.0), (-0.1, 1.2)):
        ours = sdpa(
            q,
            k,
            v,
            attn_mask=mask,
            softmax="clipped",
            gamma=gamma,
            zeta=zeta,
            block_size=block_size,
        )
        ref = naive(q, k, v, mask, gamma=gamma, zeta=zeta)
        torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-10)
        g = rand(*ours.shape, seed=8)
        for a, b in zip(
            torch.autograd.grad(ours, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)
        ):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_saves_only_inputs_and_per_row_statistics():
    """No (L, S) tensor is kept for backward: the saved tensors are the inputs, the mask
    and one float per query row."""
    q, k, v = (t.requires_grad_() for t in qkv(B=(1,), L=64, S=80, dtype=torch.float32))
    out = sdpa(q, k, v, softmax="clipped", block_size=16)
    saved = out.grad_fn.next_functions[0][0].saved_tensors  # out is a view of the Function's
    sizes = sorted(t.numel() for t in saved if t is not None)
    assert max(sizes) <= max(q.numel(), k.numel(), v.numel())
    assert 64 * 80 not in sizes


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            # new memory only (views and in-place results share an input's storage)
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("block_size", [None, 32])
def test_no_op_builds_the_score_matrix(monkeypatch, block_size):
    """Forward and backward at L = S = 256 with 4096-entry tiles: no aten op produces a
    tensor of L x S entries or more (the largest are the inputs and their gradients)."""
    monkeypatch.setattr(sdpa_module, "TILE_ELEMENTS", 4096)
    L = S = 256
    q, k, v = (t.requires_grad_() for t in qkv(B=(1,), L=L, S=S, E=4, Ev=4))
    mask = torch.ones(L, S, dtype=torch.bool).tril()  # as big as a score matrix: kept out
    with LargestTensor() as seen:
        out = sdpa(q, k, v, attn_mask=mask, softmax="clipped", block_size=block_size)
        torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert seen.largest <= max(4096, q.numel()) < L * S


@settings(max_examples=20, deadline=None)
@given(
    L=st.integers(1, 9),
    S=st.integers(1, 9),
    block=st.integers(1, 10),
    gamma=st.floats(-0.5, 0.0),
    zeta=st.floats(1.0, 1.5),
    causal=st.booleans(),
)
def test_output_does_not_depend_on_the_block_size(L, S, block, gamma, zeta, causal):
    q, k, v = qkv(B=(2,), L=L, S=S)
    whole = sdpa(q, k, v, is_causal=causal, softmax="clipped", gamma=gamma, zeta=zeta)
    blocked = sdpa(
        q, k, v, is_causal=causal, softmax="clipped", gamma=gamma, zeta=zeta, block_size=block
    )
    torch.testing.assert_close(blocked, whole, atol=1e-12, rtol=1e-10)
    assert bool((blocked.abs() <= v.abs().sum(-2, keepdim=True) + 1e-12).all())


def test_query_blocks_of_one_row(monkeypatch):
    """A tile budget smaller than one row still walks (one query row per tile)."""
    monkeypatch.setattr(sdpa_module, "TILE_ELEMENTS", 4)
    q, k, v = qkv(B=(2,), L=5, S=6)
    ref = attention_ref.attention(np64(q), np64(k), np64(v), causal=True, gamma=-0.1)
    out = sdpa(q, k, v, is_causal=True, softmax="clipped", gamma=-0.1, block_size=2)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)


# --------------------------------------------------------------- fully masked rows


@pytest.mark.parametrize("softmax", ["softmax", "clipped"])
@pytest.mark.parametrize("block_size", [None, 2])
@pytest.mark.parametrize("float_mask", [False, True])
def test_fully_masked_rows_give_zeros_and_zero_gradient(softmax, block_size, float_mask):
    q, k, v = (t.requires_grad_() for t in qkv(B=(2,), dtype=torch.float32))
    mask = keep_mask(dead_row=2)
    if float_mask:
        mask = torch.zeros(mask.shape).masked_fill(~mask, -math.inf)
    out = sdpa(q, k, v, attn_mask=mask, softmax=softmax, block_size=block_size)
    assert torch.all(out[:, 2] == 0) and not out.isnan().any()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn(out.shape))
    assert torch.all(dq[:, 2] == 0)
    for g in (dq, dk, dv):
        assert torch.isfinite(g).all()


def test_torch_nan_rows_are_patched(monkeypatch):
    """Where torch's kernel gives NaN for a fully masked row (older torch, some accelerator
    kernels), the patched call gives zeros and NaN-free gradients."""
    real = F.scaled_dot_product_attention

    def nan_rows(q, k, v, attn_mask=None, **kw):
        out = real(q, k, v, attn_mask=attn_mask, **kw)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            out = out.masked_fill(~attn_mask.any(-1, keepdim=True), math.nan)
        return out

    monkeypatch.setattr(sdpa_module.F, "scaled_dot_product_attention", nan_rows)
    q, k, v = (t.requires_grad_() for t in qkv(B=(2,), dtype=torch.float32))
    out = sdpa(q, k, v, attn_mask=keep_mask(dead_row=2))
    assert torch.all(out[:, 2] == 0) and not out.isnan().any()
    for g in torch.autograd.grad(out, (q, k, v), torch.randn(out.shape)):
        assert torch.isfinite(g).all()


def test_no_key_at_all():
    q, k, v = (t.requires_grad_() for t in qkv(B=(2,), S=0))
    for softmax in ("softmax", "clipped"):
        out = sdpa(q, k, v, softmax=softmax)
        assert out.shape == (2, 7, 4) and torch.all(out == 0)
        gq, gk, gv = torch.autograd.grad(out.sum(), (q, k, v))
        assert torch.all(gq == 0) and gk.shape == k.shape and gv.shape == v.shape


# ---------------------------------------------------------------- shapes and dtypes


@pytest.mark.parametrize("softmax", ["softmax", "clipped"])
def test_empty_batch(softmax):
    q, k, v = (t.requires_grad_() for t in qkv(B=(0, 3)))
    out = sdpa(q, k, v, softmax=softmax)
    assert out.shape == (0, 3, 7, 4)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(g.shape == t.shape for g, t in zip(grads, (q, k, v)))


@pytest.mark.parametrize("block_size", [None, 3])
def test_noncontiguous_and_broadcast_inputs(block_size):
    q, k, v = qkv(B=(2, 3))
    wide = [torch.stack([t, torch.zeros_like(t)], -1)[..., 0] for t in (q, k, v)]
    assert not wide[0].is_contiguous()
    mask = keep_mask().T.contiguous().T  # non-contiguous mask
    a = sdpa(*wide, attn_mask=mask, softmax="clipped", block_size=block_size)
    b = sdpa(q, k, v, attn_mask=mask.contiguous(), softmax="clipped", block_size=block_size)
    torch.testing.assert_close(a, b, atol=1e-14, rtol=0)
    # key and value shared by the heads: (2, 1, S, E) broadcast against (2, 3, L, E)
    k1, v1 = k[:, :1].requires_grad_(), v[:, :1].requires_grad_()
    out = sdpa(q, k1, v1, softmax="clipped", block_size=block_size)
    ref = attention_ref.attention(np64(q), np64(k1), np64(v1))
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-12)
    gk, gv = torch.autograd.grad(out.sum(), (k1, v1))
    assert gk.shape == k1.shape and gv.shape == v1.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("softmax", ["softmax", "clipped"])
def test_low_precision(dtype, softmax):
    q, k, v = (t.requires_grad_() for t in qkv(dtype=dtype))
    mask = keep_mask()
    out = sdpa(q, k, v, attn_mask=mask, softmax=softmax, block_size=4)
    assert out.dtype == dtype
    wide = sdpa(*(t.detach().double() for t in (q, k, v)), attn_mask=mask, softmax=softmax)
    tol = {torch.float16: 5e-3, torch.bfloat16: 4e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(out.double(), wide, atol=tol, rtol=tol)
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


# -------------------------------------------------------------------------- quantizer


class RoundQuantizer(torch.nn.Module):
    """Element-wise round to multiples of 1/15 with a straight-through gradient, and a
    calibration mode that only counts calls (the quant package's interface)."""

    def __init__(self):
        super().__init__()
        self.calibrating = False
        self.calls = 0

    def forward(self, p):
        self.calls += 1
        if self.calibrating:
            return p
        return p + ((p * 15).round() / 15 - p).detach()


@pytest.mark.parametrize("softmax", ["softmax", "clipped"])
@pytest.mark.parametrize("block_size", [None, 2])
def test_quantizer_per_block_equals_quantizer_on_the_matrix(softmax, block_size):
    q, k, v = (t.requires_grad_() for t in qkv(B=(2,)))
    mask = keep_mask()
    quant = RoundQuantizer()
    gamma = -0.1 if softmax == "clipped" else 0.0
    ours = sdpa(
        q,
        k,
        v,
        attn_mask=mask,
        softmax=softmax,
        gamma=gamma,
        probs_quantizer=quant,
        block_size=block_size,
    )
    ref = naive(q, k, v, mask, gamma=gamma, quantizer=quant)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-10)
    refq = attention_ref.attention(
        np64(q),
        np64(k),
        np64(v),
        mask.numpy(),
        gamma=gamma,
        clipped=softmax == "clipped",
        quantizer=lambda p: np.round(p * 15) / 15,
    )
    np.testing.assert_allclose(ours.detach().numpy(), refq, atol=1e-12)
    g = rand(*ours.shape, seed=3)
    for a, b in zip(
        torch.autograd.grad(ours, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)
    ):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_calibrating_quantizer_is_called_per_block_in_forward_only():
    q, k, v = (t.requires_grad_() for t in qkv(B=(2,), L=4, S=8))
    quant = RoundQuantizer()
    quant.calibrating = True
    out = sdpa(q, k, v, softmax="clipped", probs_quantizer=quant, block_size=2)
    assert quant.calls == 4  # one query block, four key blocks
    out.sum().backward()
    assert quant.calls == 4
    torch.testing.assert_close(out, sdpa(q, k, v, softmax="clipped"), atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- compile


def test_compile_equals_eager():
    q, k, v = (t.requires_grad_() for t in qkv(B=(2,), dtype=torch.float32))
    mask = keep_mask()

    def both(q, k, v):
        a = sdpa(q, k, v, attn_mask=mask, softmax="clipped", block_size=3)
        b = sdpa(q, k, v, is_causal=True, softmax="clipped")
        c = sdpa(q, k, v, attn_mask=mask)
        return a + b + c

    torch._dynamo.reset()
    eager = both(q, k, v)
    compiled = torch.compile(both, backend="aot_eager")(q, k, v)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    g = torch.randn(eager.shape)
    for a, b in zip(
        torch.autograd.grad(compiled, (q, k, v), g), torch.autograd.grad(eager, (q, k, v), g)
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "change,error,name",
    [
        ({"key": rand(2, 3, 9, 6)}, ValueError, "key"),
        ({"value": rand(2, 3, 8, 4)}, ValueError, "value"),
        ({"key": rand(4, 3, 9, 5), "value": rand(4, 3, 9, 4)}, ValueError, "batch"),
        ({"query": rand(5)}, ValueError, "query"),
        ({"key": rand(2, 3, 9, 5, dtype=torch.float32)}, TypeError, "key"),
        ({"query": torch.ones(2, 3, 7, 5, dtype=torch.long)}, TypeError, "query"),
        ({"attn_mask": torch.ones(7, 9, dtype=torch.long)}, TypeError, "attn_mask"),
        ({"attn_mask": torch.ones(7, 8, dtype=torch.bool)}, ValueError, "attn_mask"),
        (
            {"attn_mask": torch.ones(7, 9, dtype=torch.bool), "is_causal": True},
            ValueError,
            "is_causal",
        ),
        ({"is_causal": 1}, TypeError, "is_causal"),
        ({"softmax": "sparsemax"}, ValueError, "softmax"),
        ({"gamma": 0.1}, ValueError, "gamma"),
        ({"zeta": 0.9}, ValueError, "zeta"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"probs_quantizer": 3}, TypeError, "probs_quantizer"),
        ({"scale": math.inf}, ValueError, "scale"),
    ],
)
def test_errors_name_the_argument(change, error, name):
    q, k, v = qkv()
    args = {"query": q, "key": k, "value": v, **change}
    with pytest.raises(error, match=name):
        sdpa(args.pop("query"), args.pop("key"), args.pop("value"), **args)


def test_a_rowwise_quantizer_sees_whole_rows():
    """quant.SoftmaxBinarizer(per_row=True) compares each entry with its row's max: the
    blocked path gives it whole rows, equal to binarizing the full probability matrix."""
    from softmaxkit import quant

    g = torch.Generator().manual_seed(0)
    q, k, val = (torch.randn(2, 5, 40, 8, generator=g, dtype=torch.float64) for _ in range(3))
    binarizer = quant.SoftmaxBinarizer()
    assert binarizer.elementwise is False
    out = sdpa(q, k, val, probs_quantizer=binarizer)
    p = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1)
    torch.testing.assert_close(out, binarizer(p) @ val)
    with pytest.raises(ValueError, match="block_size"):
        sdpa(q, k, val, probs_quantizer=binarizer, block_size=8)
