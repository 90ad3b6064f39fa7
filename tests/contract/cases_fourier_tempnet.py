"""Contract cases of FourierHead, TempNet (``softmaxkit.heads``) and tempnet_dro_loss,
TempNetDROLoss (``softmaxkit.losses``)."""

from __future__ import annotations

import numpy as np
import torch

from softmaxkit import heads as H
from softmaxkit import losses as L
from tests.contract.inputs import labels, np64, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import fourier_ref, tempnet_ref

N, D, M, F = 4, 3, 7, 2
V, HID = 6, 5
REDUCTIONS = ("mean", "sum", "none")


# ------------------------------------------------------------------------- FourierHead


def fourier(x, w, b, **options):
    """FourierHead(D, M, F) with its linear layer set to (w, b): log(P + eps)."""
    head = H.FourierHead(w.shape[1], M, (w.shape[0] - 2) // 2, **options)
    return torch.func.functional_call(head, {"linear.weight": w, "linear.bias": b}, (x,))


def unit_rows(w):
    """Rows of L1 norm 1: ``x @ w.T`` never exceeds ``max |x|`` (the extreme-magnitude test
    scales x to the float maximum; a matmul that overflows is out of scope)."""
    return w / w.abs().sum(-1, keepdim=True)


def fourier_samples(dtype):
    w, b = unit_rows(randn(2 * (F + 1), D, seed=5)), randn(2 * (F + 1), seed=6)
    return [
        Sample((randn(N, D, dtype=dtype), w.to(dtype), b.to(dtype)), grad=(0, 1, 2)),
        Sample(
            (randn(2, 3, D, dtype=dtype, seed=1), w.to(dtype), b.to(dtype)),
            {"eps": 1e-3},
            grad=(0, 1),
        ),
    ]


def fourier_reference(x, w, b, *, eps=1e-5):
    x2 = np64(x).reshape(-1, D)
    out = fourier_ref.fourier_head_ref(x2, np64(w), np64(b), M, F, eps=eps)[1]
    return out.reshape(tuple(x.shape[:-1]) + (M,))


# ------------------------------------------------------------------------------ TempNet


def tempnet(x, **options):
    torch.manual_seed(0)
    net = H.TempNet(V, hidden_size=HID, **options).to(torch.float64).eval()
    return net(x)


def tempnet_reference(x, **options):
    torch.manual_seed(0)
    net = H.TempNet(V, hidden_size=HID, **options).to(torch.float64).eval()
    p = {k: v.detach().numpy() for k, v in net.named_parameters()}
    return tempnet_ref.tempnet_ref(
        np64(x).reshape(-1, V),
        p["proj.0.weight"],
        p["proj.0.bias"],
        p["proj.3.weight"],
        p["proj.3.bias"],
        float(p["scaler"]),
        p["last.weight"][0],
        float(p["last.bias"][0]),
        net.tau_min,
        net.tau_max,
    ).reshape(tuple(x.shape[:-1]) + (1,))


def tempnet_samples(dtype):
    return [
        Sample((randn(N, V, dtype=dtype, scale=3.0),), {"detach_input": False}, grad=(0,)),
        Sample((randn(2, 3, V, dtype=dtype, seed=2),), {"tau_min": 0.1, "tau_max": 2.0}),
    ]


# --------------------------------------------------------------------- tempnet_dro_loss


def dro_samples(dtype):
    tau = (0.5 + torch.rand(N, generator=torch.Generator().manual_seed(3))).double()
    return [
        Sample((randn(N, V, dtype=dtype), labels(N, classes=V), tau.to(dtype)), grad=(0, 2)),
        Sample(
            (
                randn(N, V, dtype=dtype, seed=4),
                labels(N, classes=V, seed=5),
                tau[:, None].to(dtype),
            ),
            {"rho": 1.0},
            grad=(0, 2),
        ),
    ]


def dro_reference(z, y, tau, *, rho=8.0, ignore_index=-100, reduction="mean"):
    return np.asarray(
        tempnet_ref.tempnet_dro_ref(np64(z), y.numpy(), np64(tau), rho, ignore_index, reduction)
    )


def dro_module(z, y, tau, **options):
    rho = options.pop("rho", 8.0)
    return L.TempNetDROLoss(rho, **options)(z, y, tau)


DRO_BAD = [
    Bad({"rho": float("inf")}, ValueError, "rho"),
    Bad({"reduction": "max"}, ValueError, "reduction"),
]

register(
    Case(
        name="softmaxkit.heads.FourierHead",
        op=fourier,
        samples=fourier_samples,
        reference=fourier_reference,
        magnitude=(0,),
        bad=[
            Bad({"eps": -1.0}, ValueError, "eps"),
            Bad({"regularization_gamma": -1.0}, ValueError, "regularization_gamma"),
            Bad({"output": "logits"}, ValueError, "output"),
        ],
        empty=lambda: Sample(
            (randn(0, D), randn(2 * (F + 1), D, seed=5), randn(2 * (F + 1), seed=6)), grad=(1,)
        ),
    ),
    Case(
        name="softmaxkit.heads.TempNet",
        op=tempnet,
        samples=tempnet_samples,
        reference=tempnet_reference,
        magnitude=(0,),
        bad=[
            Bad({"tau_min": 0.0}, ValueError, "tau_min"),
            Bad({"tau_max": 0.1}, ValueError, "tau_max"),
        ],
        empty=lambda: Sample((randn(0, V),), {"detach_input": False}, grad=(0,)),
    ),
    Case(
        name="softmaxkit.losses.tempnet_dro_loss",
        op=L.tempnet_dro_loss,
        samples=dro_samples,
        reference=dro_reference,
        reductions=REDUCTIONS,
        ignore_index=True,
        target_arg=1,
        labels={1: "target"},
        magnitude=(0,),
        bad=DRO_BAD,
        beyond_max="z / tau with tau < 1 and z_j - z_y exceed float32's range at 3e38, as in "
        "F.cross_entropy(z / tau, y)",
        empty=lambda: Sample(
            (randn(0, V), torch.zeros(0, dtype=torch.long), torch.ones(0, dtype=torch.float64)),
            grad=(0,),
        ),
    ),
    Case(
        name="softmaxkit.losses.TempNetDROLoss",
        op=dro_module,
        samples=dro_samples,
        reference=dro_reference,
        reductions=REDUCTIONS,
        ignore_index=True,
        target_arg=1,
        labels={1: "target"},
        magnitude=(0,),
        bad=DRO_BAD,
        beyond_max="z / tau with tau < 1 and z_j - z_y exceed float32's range at 3e38, as in "
        "F.cross_entropy(z / tau, y)",
        empty=lambda: Sample(
            (randn(0, V), torch.zeros(0, dtype=torch.long), torch.ones(0, dtype=torch.float64)),
            grad=(0,),
        ),
    ),
)
