"""Contract cases of ``softmaxkit.attention``: scaled_dot_product_attention and
MultiheadAttention (the Re-ttention cases live with Re-ttention)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as TF

from softmaxkit import attention as A
from tests.contract.inputs import keep, np64, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import attention_ref

# ------------------------------------------------------------ scaled_dot_product_attention

B, L, S, E, EV = 2, 5, 6, 4, 3


def _qkv(dtype, L=L, S=S, seed=0):
    return (
        randn(B, L, E, dtype=dtype, seed=seed, scale=2.0),
        randn(B, S, E, dtype=dtype, seed=seed + 1, scale=2.0),
        randn(B, S, EV, dtype=dtype, seed=seed + 2),
    )


def _dead_row_mask():
    m = keep(L, S, seed=5)
    m[1] = False  # a query row that keeps no key: zeros
    return m


def sdpa_samples(dtype):
    float_mask = randn(1, S, dtype=dtype, seed=9).masked_fill(torch.arange(S) == 2, -math.inf)
    return [
        Sample(_qkv(dtype), {"softmax": "clipped", "block_size": 2}, grad=(0, 1, 2)),
        Sample(
            _qkv(dtype, seed=3),
            {"softmax": "clipped", "gamma": -0.1, "zeta": 1.05, "attn_mask": _dead_row_mask()},
            grad=(0, 1, 2),
        ),
        Sample(_qkv(dtype, L=7, seed=6), {"is_causal": True}, grad=(0, 1, 2)),
        Sample(
            _qkv(dtype, seed=9),
            {"softmax": "clipped", "attn_mask": float_mask, "block_size": 4},
            grad=(0, 1, 2),
        ),
    ]


def sdpa_reference(
    q,
    k,
    v,
    *,
    attn_mask=None,
    is_causal=False,
    softmax="softmax",
    gamma=-0.025,
    zeta=1.0,
    block_size=None,
    **_,
):
    return attention_ref.attention(
        np64(q),
        np64(k),
        np64(v),
        None
        if attn_mask is None
        else attn_mask.numpy()
        if attn_mask.dtype == torch.bool
        else np64(attn_mask),
        causal=is_causal,
        gamma=gamma,
        zeta=zeta,
        clipped=softmax == "clipped",
    )


def sdpa_baseline(q, k, v, *, softmax="softmax", attn_mask=None, is_causal=False, **_):
    """torch's own SDPA in the input dtype for the plain softmax."""
    if softmax != "softmax":
        return None
    return TF.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


register(
    Case(
        name="softmaxkit.attention.scaled_dot_product_attention",
        op=A.scaled_dot_product_attention,
        samples=sdpa_samples,
        reference=sdpa_reference,
        baseline=sdpa_baseline,
        empty=lambda: Sample(
            (randn(0, L, E), randn(0, S, E), randn(0, S, EV)),
            {"softmax": "clipped"},
            grad=(0, 1, 2),
        ),
        bad=[
            Bad({}, TypeError, "query", args={0: [[1.0]]}),
            Bad({}, ValueError, "key", args={1: randn(B, S, E + 1, dtype=torch.float32)}),
            Bad({}, ValueError, "value", args={2: randn(B, S + 1, EV, dtype=torch.float32)}),
            Bad({"attn_mask": torch.ones(L, S, dtype=torch.long)}, TypeError, "attn_mask"),
            Bad({"attn_mask": torch.ones(L, S + 1, dtype=torch.bool)}, ValueError, "attn_mask"),
            Bad({"softmax": "sparsemax"}, ValueError, "softmax"),
            Bad({"gamma": 0.5}, ValueError, "gamma"),
            Bad({"block_size": 0}, ValueError, "block_size"),
        ],
    )
)


# ------------------------------------------------------------------- MultiheadAttention

N, T, D, H = 2, 4, 8, 2


def _bf16_exact(*shape, seed):
    """Seeded weights rounded to bfloat16 values (exact in every floating dtype), so that a
    low-precision module has the float64 module's weights."""
    return randn(*shape, seed=seed, scale=0.4).to(torch.bfloat16).to(torch.float64)


def build_mha(dtype, **options) -> A.MultiheadAttention:
    m = A.MultiheadAttention(D, H, dtype=dtype, **options)
    with torch.no_grad():
        for i, (_, p) in enumerate(sorted(m.named_parameters())):
            p.copy_(_bf16_exact(*p.shape, seed=100 + i))
    return m


def mha(query, key, value, **options):
    module_options = {
        k: options.pop(k)
        for k in list(options)
        if k in ("softmax", "gamma", "zeta", "gate", "gate_input", "gate_mlp_hidden")
    }
    return build_mha(query.dtype, **module_options)(query, key, value, **options)


def mha_samples(dtype):
    x = randn(N, T, D, dtype=dtype, seed=1)
    q, k, v = (randn(N, T + 1, D, dtype=dtype, seed=s) for s in (2, 3, 4))
    kpm = torch.tensor([[False, False, True, False, True], [True, False, False, False, False]])
    return [
        Sample(
            (x, x, x),
            {"softmax": "clipped", "gate": "conditional_per_token", "need_weights": False},
            grad=(0,),
        ),
        Sample(
            (q[:, :T], k, v),
            {"gate": "conditional_per_head", "gate_input": "all_features", "key_padding_mask": kpm},
            grad=(0, 1, 2),
        ),
        Sample((q[:, :T], k, v), {}, grad=(0, 1, 2)),
        Sample(
            (x, x, x),
            {
                "softmax": "clipped",
                "gamma": -0.1,
                "gate": "unconditional_per_head",
                "gate_mlp_hidden": 2,
            },
            grad=(0,),
        ),
        Sample(
            (x, x, x),
            {
                "softmax": "clipped",
                "gate": "conditional_per_token",
                "gate_mlp_hidden": 2,
                "need_weights": False,
            },
            grad=(0,),
        ),
    ]


def mha_reference(
    query,
    key,
    value,
    *,
    softmax="softmax",
    gamma=-0.025,
    zeta=1.0,
    gate=None,
    gate_input="head_slice",
    gate_mlp_hidden=None,
    key_padding_mask=None,
    **_,
):
    m = build_mha(
        torch.float64,
        softmax=softmax,
        gamma=gamma,
        zeta=zeta,
        gate=gate,
        gate_input=gate_input,
        gate_mlp_hidden=gate_mlp_hidden,
    )
    p = {
        "in_proj_weight": np64(m.in_proj_weight),
        "in_proj_bias": np64(m.in_proj_bias),
        "out_weight": np64(m.out_proj.weight),
        "out_bias": np64(m.out_proj.bias),
    }
    g = m.gate_proj
    if gate == "unconditional_per_head":
        p["logit"] = np64(g.logit)
    elif gate is not None and gate_input == "head_slice":
        p["w"], p["b"] = np64(g.weight), np64(g.bias)
        if gate_mlp_hidden is not None:
            p["w1"], p["b1"] = np64(g.weight1), np64(g.bias1)
    elif gate is not None:
        p["w"], p["b"] = np64(g.proj.weight), np64(g.proj.bias)
    keep_mask = None
    if key_padding_mask is not None:
        keep_mask = (
            (~key_padding_mask)[:, None, :]
            .expand(query.shape[0], query.shape[1], key.shape[1])
            .numpy()
        )
    return attention_ref.gated_mha(
        np64(query),
        np64(key),
        np64(value),
        p,
        num_heads=H,
        gate=gate,
        gate_input=gate_input,
        keep=keep_mask,
        gamma=gamma,
        zeta=zeta,
        clipped=softmax == "clipped",
    )


register(
    Case(
        name="softmaxkit.attention.MultiheadAttention",
        op=mha,
        samples=mha_samples,
        reference=mha_reference,
        empty=lambda: Sample(
            (randn(0, T, D), randn(0, T, D), randn(0, T, D)),
            {"softmax": "clipped", "gate": "conditional_per_token"},
            grad=(0, 1, 2),
        ),
        tol={
            torch.float16: {"atol": 5e-3, "rtol": 1e-2},
            torch.bfloat16: {"atol": 3e-2, "rtol": 5e-2},
        },
        compile=False,
        bad=[
            Bad({"softmax": "entmax"}, ValueError, "softmax"),
            Bad({"gate": "per_token"}, ValueError, "gate"),
            Bad(
                {"key_padding_mask": torch.ones(N, T, dtype=torch.long)},
                TypeError,
                "key_padding_mask",
            ),
            Bad({}, ValueError, "query", args={0: randn(N, T, D + 1, dtype=torch.float32)}),
        ],
        skip={
            "compile": "module built per call here; compiled (forward and backward) in "
            "tests/attention/test_multihead.py::test_compile_equals_eager"
        },
    )
)
