"""Contract cases of ``softmaxkit.sparsity``: every name in its ``__all__``."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from softmaxkit import sparsity as S
from tests.contract.inputs import np64, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import maskllm_ref as ref

SEED = 0
NOT_A_MAP = "not a map of a floating tensor"


def seeded(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_weight(out: int, d: int, dtype) -> torch.Tensor:
    """Distinct magnitudes k / 8 (exact in float16 and bfloat16), so every dtype sees the same
    magnitude order (the N:M choice of a group is a discrete function of that order)."""
    values = torch.arange(1, out * d + 1, dtype=torch.float64) / 8
    perm = torch.randperm(out * d, generator=seeded(1))
    signs = torch.where(torch.rand(out * d, generator=seeded(2)) < 0.5, -1.0, 1.0)
    return (values[perm] * signs).reshape(out, d).to(dtype)


# -------------------------------------------------------------------------- candidates


def candidates_samples(dtype):
    return [Sample((2, 4), {"dtype": dtype}), Sample((1, 4), {"dtype": dtype})]


# --------------------------------------------------------------------------- soft mask


def soft_mask(logits, *args, **kw):
    """One sample with the Gumbel noise of a generator seeded with SEED."""
    return S.nm_soft_mask(logits, *args, generator=seeded(), **kw)


def soft_mask_samples(dtype):
    return [
        Sample((randn(5, 6, dtype=dtype, scale=0.01),), {"scale": 1e2, "tau": 4.0}, grad=(0,)),
        Sample(
            (randn(2, 3, 4, dtype=dtype, seed=1),), {"n": 1, "scale": 1.0, "tau": 0.5}, grad=(0,)
        ),
    ]


def soft_mask_reference(logits, n=2, m=4, *, scale, tau):
    c = math.comb(m, n)
    noise = torch.empty(logits.shape, dtype=torch.float64).exponential_(generator=seeded())
    out = ref.soft_mask(np64(logits), ref.gumbel_noise(noise.numpy()), n, m, scale, tau)
    return out.reshape(*logits.shape[:-1], m) if c else out


# ------------------------------------------------------------------- magnitude / check


def magnitude_samples(dtype):
    return [Sample((exact_weight(3, 8, dtype),)), Sample((exact_weight(4, 8, dtype), 1, 4))]


def is_nm_reference(x, n=2, m=4):
    counts = (np64(x) != 0).reshape(-1, m).sum(-1)
    ok = counts == n if x.dtype == torch.bool else counts <= n
    return np.asarray(bool(ok.all()), dtype=np.float64)


def is_nm_samples(dtype):
    w = exact_weight(3, 8, dtype)
    keep = torch.from_numpy(ref.magnitude_mask(np64(w), 2, 4))
    return [
        Sample((w * keep.to(dtype),)),  # a 2:4 masked weight: True
        Sample((w,)),  # dense: False
        Sample((keep,)),  # the boolean mask: True
    ]


# ---------------------------------------------------------------------------- learner


def learner_forward(x, w, b, *, training=True, factory=S.NMMaskLearner, **options):
    """``x`` through ``nn.Linear(w, b)`` with learned 2:4 masks (seeded init and noise)."""
    layer = nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    factory(layer, generator=seeded(), total_steps=4, **options)
    layer.train(training)
    return layer(x)


def learner_samples(dtype):
    w = exact_weight(3, 8, dtype)
    b = randn(3, dtype=dtype, seed=4)
    return [
        Sample((randn(5, 8, dtype=dtype), w, b), grad=(0,)),
        Sample((randn(2, 4, 8, dtype=dtype, seed=5), w, b), {"training": False}, grad=(0,)),
        Sample((randn(5, 8, dtype=dtype, seed=6), w, b), {"prior": None}, grad=(0,)),
    ]


def learner_reference(x, w, b, *, training=True, prior="magnitude", **_):
    g = seeded()
    gate = torch.empty(w.numel() // 4, 6).normal_(0, 0.01, generator=g).double()
    gate = gate.numpy()
    if prior == "magnitude":
        gate = ref.prior_init(gate, ref.magnitude_mask(np64(w), 2, 4), 2, 4, 3.0)
    if training:
        e = torch.empty(gate.shape, dtype=torch.float64).exponential_(generator=g)
        mask = ref.soft_mask(gate, ref.gumbel_noise(e.numpy()), 2, 4, 1e2, 4.0)
    else:
        mask = ref.hard_mask(gate, 2, 4)
    return np64(x) @ (np64(w) * mask.reshape(w.shape)).T + np64(b)


LEARNER_SKIP = {
    "compile": "builds and parametrizes a module per call; the masked model itself is compiled "
    "in tests/sparsity/test_maskllm.py::test_torch_compile_cpu",
}


def learner_case(name, factory):
    return Case(
        name=name,
        op=lambda *a, **kw: learner_forward(*a, factory=factory, **kw),
        samples=learner_samples,
        reference=learner_reference,
        empty=lambda: Sample((randn(0, 8), exact_weight(3, 8, torch.float64), randn(3)), grad=(0,)),
        compile=False,
        bad=[
            Bad({"n": 3}, ValueError, "n:m"),
            Bad({"temperature_range": (4.0, 0.0)}, ValueError, "temperature_range"),
            Bad({"scale_range": (-1.0, 5.0)}, ValueError, "scale_range"),
            Bad({}, ValueError, "in_features", args={0: randn(5, 6), 1: randn(3, 6)}),
            Bad({"prior": "wanda"}, ValueError, "prior"),
        ],
        skip=LEARNER_SKIP,
    )


register(
    Case(
        name="softmaxkit.sparsity.nm_candidates",
        op=S.nm_candidates,
        samples=candidates_samples,
        reference=lambda n, m, **_: ref.candidates(n, m),
        noncontiguous=False,
        gradcheck=False,
        bad=[Bad({}, ValueError, "n:m", args={0: 3}), Bad({}, TypeError, "n", args={0: 2.0})],
        skip={
            "gradcheck": "a constant table",
            "noncontiguous": "takes no tensor",
            "empty": "takes no tensor",
        },
    ),
    Case(
        name="softmaxkit.sparsity.nm_soft_mask",
        op=soft_mask,
        samples=soft_mask_samples,
        reference=soft_mask_reference,
        empty=lambda: Sample((randn(0, 6),), grad=(0,)),
        bad=[
            Bad({"tau": 0.0}, ValueError, "tau"),
            Bad({"scale": -1.0}, ValueError, "scale"),
            Bad({}, ValueError, "logits", args={0: randn(5, 5)}),
            Bad({"n": 3}, ValueError, "n:m"),
        ],
    ),
    Case(
        name="softmaxkit.sparsity.magnitude_nm_mask",
        op=S.magnitude_nm_mask,
        samples=magnitude_samples,
        reference=lambda w, n=2, m=4: ref.magnitude_mask(np64(w), n, m),
        keeps_dtype=False,
        main=lambda out: out.double(),  # compare the boolean answers as 0/1
        gradcheck=False,
        empty=lambda: Sample((randn(0, 8),)),
        bad=[
            Bad({}, ValueError, "weight", args={0: randn(3, 6)}),
            Bad({"m": 8}, ValueError, "n:m"),
        ],
        skip={"gradcheck": "a boolean mask (no gradient)"},
    ),
    Case(
        name="softmaxkit.sparsity.is_nm_sparse",
        op=S.is_nm_sparse,
        samples=is_nm_samples,
        reference=is_nm_reference,
        keeps_dtype=False,
        main=lambda out: out.double(),  # compare the boolean answers as 0/1
        gradcheck=False,
        bad=[Bad({}, ValueError, "x", args={0: randn(3, 6)}), Bad({"n": 4}, ValueError, "n:m")],
        skip={
            "gradcheck": "a boolean answer (no gradient)",
            "empty": "an empty tensor is N:M sparse (True), not a loss of 0 "
            "(tests/sparsity/test_maskllm.py::test_is_nm_sparse checks it)",
        },
    ),
    learner_case("softmaxkit.sparsity.NMMaskLearner", S.NMMaskLearner),
    learner_case("softmaxkit.sparsity.apply_nm_masks", S.apply_nm_masks),
)
