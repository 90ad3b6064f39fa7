"""Contract cases of ``softmaxkit.moe``: every name in its ``__all__``.

The gates and the layer are modules; each case builds one with its parameters set from the
sample's tensors (so gradcheck reaches the input and the router weights) and returns the
dense ``(T, E)`` combine matrix (gates) or the layer's output (MoE).
"""

from __future__ import annotations

import math

import torch

from softmaxkit import moe
from tests.contract.inputs import np64, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import moe_ref

T, D, E = 6, 4, 5


def _param_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def topk_gate(x, w, b, *, k=2, noise=None, capacity_factor=None):
    dtype = _param_dtype(x)
    gate = moe.TopKGate(D, E, k, noise=noise, capacity_factor=capacity_factor).to(dtype)
    del gate.router.weight
    del gate.router.bias
    gate.router.weight, gate.router.bias = w.to(dtype), b.to(dtype)
    return gate(x).combine_matrix()


def _gate_args(dtype, seed=0, tokens=T):
    return (
        randn(tokens, D, dtype=dtype, seed=seed),
        randn(E, D, dtype=dtype, seed=seed + 10),
        randn(E, dtype=dtype, seed=seed + 20),
    )


def topk_samples(dtype):
    return [
        Sample(_gate_args(dtype), {"k": 2}, grad=(0, 1, 2)),
        Sample(_gate_args(dtype, seed=1), {"k": 1}, grad=(0, 1, 2)),
        Sample(_gate_args(dtype, seed=2), {"k": E}, grad=(0, 1, 2)),
    ]


def topk_reference(x, w, b, *, k=2, noise=None, capacity_factor=None):
    return moe_ref.topk_gate(np64(x), np64(w), np64(b), k)


def _temperature_gate(cls, x, w, b, **options):
    gate = cls(D, E, **options).to(_param_dtype(x))
    del gate.weight
    del gate.bias
    gate.weight = w.to(_param_dtype(x))
    gate.bias = b.to(_param_dtype(x))
    return gate(x).combine_matrix()


def dts_gate(x, w, b, **options):
    return _temperature_gate(moe.DenseToSparseGate, x, w, b, **options)


def act_gate(x, w, b, **options):
    return _temperature_gate(moe.ActivationGate, x, w, b, **options)


def temp_samples(dtype):
    return [
        Sample(_gate_args(dtype), {"temperature": 0.5}, grad=(0, 1, 2)),
        Sample(
            _gate_args(dtype, seed=1),
            {"temperature": 2.0, "bias_placement": "inside"},
            grad=(0, 1, 2),
        ),
    ]


def dts_reference(x, w, b, *, temperature=1.0, bias_placement="outside"):
    return moe_ref.temperature_gate(
        np64(x), np64(w), np64(b), temperature, inside=bias_placement == "inside"
    )


def act_reference(x, w, b, *, temperature=1.0, bias_placement="outside"):
    return moe_ref.temperature_gate(
        np64(x), np64(w), np64(b), temperature, math.tanh, inside=bias_placement == "inside"
    )


def gate_output(x, w, b, *, k=2):
    """GateOutput through its combine matrix (TopKGate's)."""
    out = topk_gate(x, w, b, k=k)
    return out


def moe_layer(x, w, b, experts, *, k=2):
    """MoE with linear bias-free experts ``experts`` (E, D, D) and a top-K gate (w, b)."""
    dtype = _param_dtype(x)
    gate = moe.TopKGate(D, E, k).to(dtype)
    del gate.router.weight
    del gate.router.bias
    gate.router.weight, gate.router.bias = w.to(dtype), b.to(dtype)
    layer = moe.MoE(D, lambda i: _Linear(experts[i]), gate)
    y, _ = layer(x)
    return y


class _Linear(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return x @ self.weight.to(x.dtype).t()


def moe_samples(dtype):
    return [
        Sample(
            (*_gate_args(dtype), randn(E, D, D, dtype=dtype, seed=30)), {"k": 2}, grad=(0, 1, 3)
        ),
        Sample(
            (
                randn(2, 3, D, dtype=dtype, seed=5),
                *_gate_args(dtype, seed=6)[1:],
                randn(E, D, D, dtype=dtype, seed=31),
            ),
            {"k": 1},
            grad=(0, 3),
        ),
    ]


def moe_reference(x, w, b, experts, *, k=2):
    x2 = np64(x).reshape(-1, D)
    c = moe_ref.topk_gate(x2, np64(w), np64(b), k)
    return moe_ref.dense_moe(x2, c, np64(experts)).reshape(tuple(x.shape))


def _empty_gate():
    return Sample(_gate_args(torch.float64, tokens=0), {}, grad=(0, 1, 2))


COMMON_BAD = [
    Bad({}, ValueError, "x", args={0: torch.zeros(T, D + 1)}),
    Bad({}, TypeError, "x", args={0: torch.zeros(T, D, dtype=torch.long)}),
]

register(
    Case(
        name="softmaxkit.moe.TopKGate",
        op=topk_gate,
        samples=topk_samples,
        reference=topk_reference,
        empty=_empty_gate,
        noncontiguous=False,
        tol={
            torch.float16: {"atol": 2e-2, "rtol": 2e-2},
            torch.bfloat16: {"atol": 5e-2, "rtol": 5e-2},
        },
        bad=[
            *COMMON_BAD,
            Bad({"k": 0}, ValueError, "k"),
            Bad({"k": E + 1}, ValueError, "k"),
            Bad({"noise": "gauss"}, ValueError, "noise"),
            Bad({"capacity_factor": 0.0}, ValueError, "capacity_factor"),
        ],
    ),
    Case(
        name="softmaxkit.moe.GateOutput",
        op=gate_output,
        samples=lambda dtype: topk_samples(dtype)[:1],
        reference=topk_reference,
        empty=_empty_gate,
        noncontiguous=False,
        tol={
            torch.float16: {"atol": 2e-2, "rtol": 2e-2},
            torch.bfloat16: {"atol": 5e-2, "rtol": 5e-2},
        },
        bad=[Bad({"k": 0}, ValueError, "k")],
    ),
    Case(
        name="softmaxkit.moe.DenseToSparseGate",
        op=dts_gate,
        samples=temp_samples,
        reference=dts_reference,
        empty=_empty_gate,
        noncontiguous=False,
        tol={
            torch.float16: {"atol": 2e-2, "rtol": 2e-2},
            torch.bfloat16: {"atol": 5e-2, "rtol": 5e-2},
        },
        bad=[
            *COMMON_BAD,
            Bad({"temperature": 0.0}, ValueError, "temperature"),
            Bad({"temperature": -1.0}, ValueError, "temperature"),
            Bad({"bias_placement": "middle"}, ValueError, "bias_placement"),
        ],
    ),
    Case(
        name="softmaxkit.moe.ActivationGate",
        op=act_gate,
        samples=temp_samples,
        reference=act_reference,
        empty=_empty_gate,
        noncontiguous=False,
        tol={
            torch.float16: {"atol": 2e-2, "rtol": 2e-2},
            torch.bfloat16: {"atol": 5e-2, "rtol": 5e-2},
        },
        bad=[
            *COMMON_BAD,
            Bad({"temperature": 0.0}, ValueError, "temperature"),
            Bad({"activation": 3}, TypeError, "activation"),
        ],
    ),
    Case(
        name="softmaxkit.moe.MoE",
        op=moe_layer,
        samples=moe_samples,
        reference=moe_reference,
        empty=lambda: Sample(
            (*_gate_args(torch.float64, tokens=0), randn(E, D, D, seed=30)), {}, grad=(0, 3)
        ),
        noncontiguous=False,
        tol={
            torch.float16: {"atol": 5e-2, "rtol": 5e-2},
            torch.bfloat16: {"atol": 2e-1, "rtol": 1e-1},
        },
        bad=[
            *COMMON_BAD,
            Bad({"k": E + 1}, ValueError, "k"),
        ],
    ),
)
