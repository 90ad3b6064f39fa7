"""MultiheadAttention: bit-for-bit torch at the defaults, the new path against torch and the
float64 reference, every gate variant, init, from_torch, torch's encoder layer, dtypes,
compile, errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from softmaxkit.attention import MultiheadAttention
from tests.reference import attention_ref

E, H, N, L, S = 8, 2, 3, 4, 5
F64 = torch.float64


def rand(*shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def torch_mha(seed=0, dtype=F64, **kw):
    torch.manual_seed(seed)
    return nn.MultiheadAttention(E, H, dtype=dtype, **kw)


def inputs(batch_first=True, kdim=E, dtype=F64, cross=True):
    q = rand(N, L, E, seed=1, dtype=dtype)
    k = rand(N, S, kdim, seed=2, dtype=dtype) if cross else q
    v = rand(N, S, kdim, seed=3, dtype=dtype) if cross else q
    if not batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    return q, k, v


def masks():
    kpm = torch.rand(N, S, generator=torch.Generator().manual_seed(4)) > 0.7
    am = torch.rand(L, S, generator=torch.Generator().manual_seed(5)) > 0.8
    return [
        {},
        {"key_padding_mask": kpm},
        {"attn_mask": am},
        {"key_padding_mask": kpm, "attn_mask": am},
        {"attn_mask": rand(N * H, L, S, seed=6)},
        {"key_padding_mask": rand(N, S, seed=7), "attn_mask": rand(L, S, seed=8)},
    ]


CONFIGS = [
    {"batch_first": True},
    {"batch_first": False},
    {"batch_first": True, "add_bias_kv": True, "add_zero_attn": True},
    {"batch_first": False, "kdim": 6, "vdim": 6, "bias": False},
]


def same(a, b):
    """Bit for bit (NaN where torch gives NaN: a query row with every key masked)."""
    torch.testing.assert_close(b, a, atol=0, rtol=0, equal_nan=True)


def close_where_torch_is_finite(ours, theirs):
    """Equal to rounding where torch is finite; finite where torch gives NaN (a query
    row with every key masked: torch's weights path gives NaN there, softmaxkit zeros)."""
    finite = torch.isfinite(theirs)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours[finite], theirs[finite], atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------ nothing switched on


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_bit_for_bit_torch_at_the_defaults(config, training):
    theirs = torch_mha(**config)
    ours = MultiheadAttention.from_torch(theirs)
    theirs.train(training)
    ours.train(training)
    assert isinstance(ours, nn.MultiheadAttention) and ours.training == training
    q, k, v = inputs(config["batch_first"], config.get("kdim", E))
    for m, need, avg in itertools.product(masks(), (True, False), (True, False)):
        a = theirs(q, k, v, need_weights=need, average_attn_weights=avg, **m)
        b = ours(q, k, v, need_weights=need, average_attn_weights=avg, **m)
        same(a[0], b[0])
        assert (a[1] is None) == (b[1] is None)
        if a[1] is not None:
            same(a[1], b[1])


def test_bit_for_bit_torch_inference_fast_path():
    theirs = torch_mha(batch_first=True).eval()
    ours = MultiheadAttention.from_torch(theirs)
    q, _, _ = inputs(cross=False)
    with torch.no_grad():
        for m in ({}, {"key_padding_mask": masks()[1]["key_padding_mask"][:, :L]}):
            same(theirs(q, q, q, **m)[0], ours(q, q, q, **m)[0])


def test_same_constructor_defaults_and_state_dict_as_torch():
    ours = MultiheadAttention(E, H, batch_first=False, dtype=F64)
    theirs = nn.MultiheadAttention(E, H, dtype=F64)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())  # both ways, strictly
    ours.load_state_dict(theirs.state_dict())
    assert MultiheadAttention(E, H).batch_first  # the one changed default


# ------------------------------------------------------- the new path equals torch too


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("block_size", [None, 2])
def test_new_path_with_plain_softmax_equals_torch(config, block_size):
    """gamma = 0, zeta = 1 makes the clipped softmax the plain one: the new path (projections,
    heads, masks, bias_kv, zero_attn, layouts) agrees with torch's to rounding."""
    theirs = torch_mha(**config)
    ours = MultiheadAttention.from_torch(
        theirs, softmax="clipped", gamma=0.0, zeta=1.0, block_size=block_size
    )
    q, k, v = inputs(config["batch_first"], config.get("kdim", E))
    for m, need in itertools.product(masks(), (True, False)):
        a = theirs(q, k, v, need_weights=need, average_attn_weights=False, **m)
        b = ours(q, k, v, need_weights=need, average_attn_weights=False, **m)
        close_where_torch_is_finite(b[0], a[0])
        if need:
            close_where_torch_is_finite(b[1], a[1])


def test_unbatched_and_causal_hint():
    theirs = torch_mha(batch_first=True)
    ours = MultiheadAttention.from_torch(theirs, softmax="clipped", gamma=0.0)
    q = rand(L, E, seed=1)
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    for need in (True, False):
        a = theirs(q, q, q, attn_mask=causal, is_causal=True, need_weights=need)
        b = ours(q, q, q, attn_mask=causal, is_causal=True, need_weights=need)
        torch.testing.assert_close(b[0], a[0], atol=1e-12, rtol=1e-10)
        assert b[0].shape == (L, E)
    assert ours(q, q, q)[1].shape == (L, L)


# --------------------------------------------------------------- against the reference


def ref_params(m: MultiheadAttention) -> dict:
    p = {
        "in_proj_weight": m.in_proj_weight.detach().numpy(),
        "in_proj_bias": m.in_proj_bias.detach().numpy(),
        "out_weight": m.out_proj.weight.detach().numpy(),
        "out_bias": m.out_proj.bias.detach().numpy(),
    }
    g = m.gate_proj
    if m.gate == "unconditional_per_head":
        p["logit"] = g.logit.detach().numpy()
    elif m.gate_input == "head_slice":
        p["w"], p["b"] = g.weight.detach().numpy(), g.bias.detach().numpy()
        if g.hidden is not None:
            p["w1"], p["b1"] = g.weight1.detach().numpy(), g.bias1.detach().numpy()
    else:
        layers = [g.proj] if g.hidden is None else [g.proj[0], g.proj[2]]
        if g.hidden is not None:
            p["w1"], p["b1"] = (t.detach().numpy() for t in (layers[0].weight, layers[0].bias))
        p["w"], p["b"] = (t.detach().numpy() for t in (layers[-1].weight, layers[-1].bias))
    return p


GATES = ["conditional_per_token", "conditional_per_head", "unconditional_per_head"]


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("gate_input", ["head_slice", "all_features"])
@pytest.mark.parametrize("hidden", [None, 3])
def test_gated_clipped_attention_equals_the_reference(gate, gate_input, hidden):
    torch.manual_seed(0)
    m = MultiheadAttention(
        E,
        H,
        softmax="clipped",
        gamma=-0.1,
        zeta=1.05,
        gate=gate,
        gate_input=gate_input,
        gate_mlp_hidden=hidden,
        gate_scale=1.5,
        dtype=F64,
    )
    with torch.no_grad():  # move the gate off its init so every weight matters
        for p in m.gate_proj.parameters():
            p.add_(rand(*p.shape, seed=11))
    q, k, v = inputs()
    kpm = masks()[1]["key_padding_mask"]
    for need in (True, False):
        out, _ = m(q, k, v, key_padding_mask=kpm, need_weights=need)
        ref = attention_ref.gated_mha(
            q.numpy(),
            k.numpy(),
            v.numpy(),
            ref_params(m),
            num_heads=H,
            gate=gate,
            gate_input=gate_input,
            gate_scale=1.5,
            keep=~kpm[:, None, :].expand(N, L, S).numpy(),
            gamma=-0.1,
            zeta=1.05,
        )
        np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("gate_input", ["head_slice", "all_features"])
@pytest.mark.parametrize("init", [0.5, 0.25])
def test_gate_starts_at_gate_init(gate, gate_input, init):
    """With the gate's last weight at 0 (gate_init_std=0) the gate is exactly gate_init:
    the output is the ungated one with the context scaled by gate_init * gate_scale."""
    torch.manual_seed(0)
    gated = MultiheadAttention(
        E,
        H,
        gate=gate,
        gate_input=gate_input,
        gate_init=init,
        gate_init_std=0.0,
        gate_scale=2.0,
        dtype=F64,
    )
    plain = MultiheadAttention(E, H, dtype=F64)
    plain.load_state_dict(gated.state_dict(), strict=False)
    with torch.no_grad():
        plain.out_proj.weight.mul_(init * 2.0)
    q, k, v = inputs()
    torch.testing.assert_close(gated(q, k, v)[0], plain(q, k, v)[0], atol=1e-12, rtol=1e-10)
    if gate == "unconditional_per_head":
        torch.testing.assert_close(
            torch.sigmoid(gated.gate_proj.logit), torch.full((H,), init, dtype=F64)
        )


def test_official_default_init_of_the_per_head_linear():
    torch.manual_seed(0)
    m = MultiheadAttention(E, H, gate="conditional_per_token", gate_init=0.25)
    bound = 1 / math.sqrt(E // H)  # nn.Linear(d_head, 1)'s default weight init
    assert m.gate_proj.weight.abs().max() <= bound
    torch.testing.assert_close(m.gate_proj.bias, torch.full((H,), math.log(0.25 / 0.75)))


def test_need_weights_path_equals_blocked_path_and_weights_are_clipped():
    torch.manual_seed(0)
    m = MultiheadAttention(
        E, H, softmax="clipped", gamma=-0.2, gate="conditional_per_head", dtype=F64
    )
    q, k, v = inputs()
    a, w = m(q, k, v, average_attn_weights=False)
    b, none = m(q, k, v, need_weights=False)
    assert none is None
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    assert w.shape == (N, H, L, S) and (w == 0).any() and (w >= 0).all()


def test_gradcheck_gated_clipped():
    torch.manual_seed(0)
    m = MultiheadAttention(
        E,
        H,
        softmax="clipped",
        gamma=-0.1,
        gate="conditional_per_token",
        gate_mlp_hidden=2,
        dtype=F64,
    )
    q, k, v = (t.requires_grad_() for t in inputs())
    kpm = masks()[1]["key_padding_mask"]
    assert torch.autograd.gradcheck(
        lambda a, b, c: m(a, b, c, key_padding_mask=kpm, need_weights=False)[0], (q, k, v)
    )
    m.block_size = 2
    assert torch.autograd.gradcheck(lambda a, b, c: m(a, b, c, need_weights=False)[0], (q, k, v))


# ------------------------------------------------------------- torch's own layers


def test_inside_torch_encoder_layer_in_inference():
    """torch's encoder layer has a fused inference fast path that reads the projection
    weights and bypasses the attention module: it must not be taken once a feature is on."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=16, batch_first=True).eval()
    vanilla = nn.TransformerEncoderLayer(E, H, dim_feedforward=16, batch_first=True).eval()
    vanilla.load_state_dict(layer.state_dict())
    layer.self_attn = MultiheadAttention.from_torch(layer.self_attn, softmax="clipped", gamma=-0.2)
    x = rand(N, L, E, dtype=torch.float32)
    with torch.no_grad():
        fast = layer(x)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            slow = layer(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
        assert not torch.allclose(fast, vanilla(x))
    torch.testing.assert_close(fast, slow)
    layer.self_attn.softmax = "softmax"  # nothing on again: the fast path is allowed
    assert layer.self_attn._qkv_same_embed_dim


# --------------------------------------------------------------------- misc behaviour


def test_quantizer_is_a_submodule_and_sees_the_probabilities():
    seen = []

    class Record(nn.Module):
        def forward(self, p):
            seen.append(p.detach().clone())
            return p

    m = MultiheadAttention(E, H, probs_quantizer=Record(), dtype=F64)
    assert "probs_quantizer" in dict(m.named_modules())
    q, k, v = inputs()
    m(q, k, v, need_weights=False)
    assert seen and all(((p >= 0) & (p <= 1)).all() for p in seen)


def test_dropout_in_training_uses_the_explicit_path():
    torch.manual_seed(0)
    m = MultiheadAttention(E, H, dropout=0.5, softmax="clipped", dtype=F64)
    q, k, v = inputs()
    torch.manual_seed(1)
    a = m(q, k, v, need_weights=False)[0]
    torch.manual_seed(1)
    b = m(q, k, v, need_weights=False)[0]
    assert torch.equal(a, b)
    m.eval()
    assert not torch.allclose(m(q, k, v)[0], a)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    torch.manual_seed(0)
    m = MultiheadAttention(E, H, softmax="clipped", gate="conditional_per_token", dtype=dtype)
    q, k, v = inputs(dtype=dtype)
    for need in (True, False):
        out, _ = m(q, k, v, need_weights=need)
        assert out.dtype == dtype and torch.isfinite(out).all()


def test_empty_batch():
    m = MultiheadAttention(E, H, softmax="clipped", gate="conditional_per_head")
    x = torch.randn(0, L, E, requires_grad=True)
    out, w = m(x, x, x)
    assert out.shape == (0, L, E) and w.shape == (0, L, L)
    out.sum().backward()
    kpm = torch.zeros(0, L, dtype=torch.bool)
    out, _ = m(x, x, x, key_padding_mask=kpm, need_weights=False)
    assert out.shape == (0, L, E)


def test_compile_equals_eager():
    torch.manual_seed(0)
    m = MultiheadAttention(E, H, softmax="clipped", gate="conditional_per_token")
    x = torch.randn(N, L, E, requires_grad=True)
    torch._dynamo.reset()
    eager = m(x, x, x, need_weights=False)[0]
    compiled = torch.compile(m, backend="aot_eager")(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(compiled, eager)
    (ge,) = torch.autograd.grad(eager.sum(), x)
    (gc,) = torch.autograd.grad(compiled.sum(), x)
    torch.testing.assert_close(gc, ge)


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        ({"softmax": "entmax"}, ValueError, "softmax"),
        ({"gate": "per_token"}, ValueError, "gate"),
        ({"gate": "conditional_per_token", "gate_input": "q"}, ValueError, "gate_input"),
        ({"gate_init": 1.0}, ValueError, "gate_init"),
        ({"gate_scale": 0.0}, ValueError, "gate_scale"),
        ({"gate_mlp_hidden": 0}, ValueError, "gate_mlp_hidden"),
        ({"gamma": 0.5}, ValueError, "gamma"),
        ({"dropout": 2.0}, ValueError, "dropout"),
        ({"probs_quantizer": "uniform"}, TypeError, "probs_quantizer"),
    ],
)
def test_constructor_errors(kwargs, error, name):
    with pytest.raises(error, match=name):
        MultiheadAttention(E, H, **kwargs)
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(E, 3)


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        ({"key_padding_mask": torch.ones(N, S, dtype=torch.long)}, TypeError, "key_padding_mask"),
        (
            {"key_padding_mask": torch.ones(N, S + 1, dtype=torch.bool)},
            ValueError,
            "key_padding_mask",
        ),
        ({"attn_mask": torch.ones(L, S, dtype=torch.int32)}, TypeError, "attn_mask"),
        ({"attn_mask": torch.ones(H, L, S, dtype=torch.bool)}, ValueError, "attn_mask"),
        ({"is_causal": True}, ValueError, "attn_mask"),
    ],
)
def test_forward_errors(kwargs, error, name):
    m = MultiheadAttention(E, H, softmax="clipped", dtype=F64)
    q, k, v = inputs()
    with pytest.raises(error, match=name):
        m(q, k, v, **kwargs)
    with pytest.raises(ValueError, match="features"):
        m(q, k[..., :6], v)


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="module"):
        MultiheadAttention.from_torch(nn.Linear(2, 2))


def test_deepcopy_and_save_load_keep_the_module():
    import copy
    import io

    torch.manual_seed(0)
    m = MultiheadAttention(E, H, kdim=6, vdim=6, softmax="clipped", gate="conditional_per_token")
    x, k = torch.randn(N, L, E), torch.randn(N, S, 6)
    buffer = io.BytesIO()
    torch.save(m, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(m), torch.load(buffer, weights_only=False)):
        assert torch.equal(other(x, k, k)[0], m(x, k, k)[0])
        assert not other._qkv_same_embed_dim
