"""Contract cases of ``softmaxkit.heads`` (issue 13, part 2b): EBV, the cosine head and
Sparse-CBM. Modules are built inside the op from the sample's tensors, so every dtype and
gradcheck see the same weights."""

from __future__ import annotations

import torch

from softmaxkit import heads as H
from tests.contract.inputs import np64, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import concept_ref, equiangular_ref

N, D, K, E = 4, 5, 3, 4
HALF_TOL = {
    torch.float16: {"atol": 2e-2, "rtol": 2e-2},
    torch.bfloat16: {"atol": 0.2, "rtol": 5e-2},
}


# ------------------------------------------------------------------------------ EBV


def ebv_basis(num_classes, dim, **kw):
    return H.equiangular_basis(num_classes, dim, **kw)


def ebv_samples(dtype):
    return [Sample((6, 4), {"threshold": 0.5, "dtype": dtype})]


register(
    Case(
        name="softmaxkit.heads.equiangular_basis",
        op=ebv_basis,
        samples=ebv_samples,
        no_reference="a stochastic optimisation: tests/heads/test_equiangular.py checks its "
        "steps against the official sliced loop (equiangular_ref) and the threshold reached",
        gradcheck=False,
        compile=False,
        noncontiguous=False,
        skip={"compile": "a generator with a data-dependent stopping rule, not a traced op"},
        bad=[
            Bad({"threshold": 1.5}, ValueError, "threshold"),
            Bad({"on_failure": "x"}, ValueError, "on_failure"),
            Bad({"dtype": torch.int64}, ValueError, "dtype"),
        ],
    )
)


def ebv_head(x, proj_weight, basis, *, temperature=0.07):
    head = H.EquiangularHead(D, K, dim=E, temperature=temperature, basis=basis.detach())
    head.to(x.dtype)
    del head.proj.weight
    head.proj.weight = proj_weight
    torch.nn.init.zeros_(head.proj.bias)
    return head(x)


def ebv_head_samples(dtype):
    return [
        Sample(
            (randn(N, D, dtype=dtype), randn(E, D, dtype=dtype, seed=5), randn(K, E, seed=6)),
            {"temperature": 0.07},
            grad=(0, 1),
        )
    ]


register(
    Case(
        name="softmaxkit.heads.EquiangularHead",
        op=ebv_head,
        samples=ebv_head_samples,
        compile=False,
        skip={
            "compile": "module: its parameters are built per call here; the compiled forward "
            "is tested in tests/heads"
        },
        reference=lambda x, w, basis, temperature=0.07: equiangular_ref.cosine_logits(
            np64(x) @ np64(w).T, np64(basis), temperature
        ),
        keeps_dtype=False,  # cosine_logits: float32 logits for half inputs
        tol=HALF_TOL,
        empty=lambda: Sample((randn(0, D), randn(E, D, seed=5), randn(K, E, seed=6)), grad=(0,)),
        bad=[Bad({"temperature": 0.0}, ValueError, "temperature")],
    )
)


# ------------------------------------------------------------------------ CosineHead


def cosine_head(x, weight, *, temperature=0.05, learn_temperature=False):
    head = H.CosineHead(D, K, temperature=temperature, learn_temperature=learn_temperature)
    head.to(x.dtype)
    del head.weight
    head.weight = weight
    return head(x)


def cosine_samples(dtype):
    x, w = randn(N, D, dtype=dtype), randn(K, D, dtype=dtype, seed=5)
    return [
        Sample((x, w), {"temperature": 0.05}, grad=(0, 1)),
        Sample((x, w), {"temperature": 0.5, "learn_temperature": True}, grad=(0, 1)),
    ]


register(
    Case(
        name="softmaxkit.heads.CosineHead",
        op=cosine_head,
        samples=cosine_samples,
        compile=False,
        skip={
            "compile": "module: its parameters are built per call here; the compiled forward "
            "is tested in tests/heads"
        },
        reference=lambda x, w, temperature, learn_temperature=False: equiangular_ref.cosine_logits(
            np64(x), np64(w), temperature
        ),
        keeps_dtype=False,
        tol=HALF_TOL,
        empty=lambda: Sample((randn(0, D), randn(K, D, seed=5)), grad=(0, 1)),
        bad=[Bad({"temperature": -1.0}, ValueError, "temperature")],
    )
)


# ------------------------------------------------------------------------- Sparse-CBM


def cbm(x, cbl_weight, head_weight, *, loss="contrastive"):
    m = H.ConceptBottleneck(D, K, loss=loss).to(x.dtype)
    del m.cbl.weight, m.head.weight
    m.cbl.weight, m.head.weight = cbl_weight, head_weight
    cbl_out, logits = m(x)
    return logits, m.concept_loss(cbl_out)


def cbm_reference(x, cbl_weight, head_weight, *, loss="contrastive"):
    cbl_out = np64(x) @ np64(cbl_weight).T
    return cbl_out @ np64(head_weight).T, concept_ref.contrastive(cbl_out)


def cbm_samples(dtype):
    return [
        Sample(
            (
                randn(N, D, dtype=dtype),
                randn(D, D, dtype=dtype, seed=5),
                randn(K, D, dtype=dtype, seed=6),
            ),
            {"loss": "contrastive"},
            grad=(0, 1, 2),
        )
    ]


register(
    Case(
        name="softmaxkit.heads.ConceptBottleneck",
        op=cbm,
        samples=cbm_samples,
        compile=False,
        skip={
            "compile": "module: its parameters are built per call here; the compiled forward "
            "is tested in tests/heads"
        },
        reference=cbm_reference,
        tol=HALF_TOL,
        empty=lambda: Sample((randn(0, D), randn(D, D, seed=5), randn(K, D, seed=6)), grad=(0,)),
        bad=[Bad({"loss": "hard"}, ValueError, "loss")],
    )
)


def cms_samples(dtype):
    return [
        Sample(
            (
                randn(6, D, dtype=dtype).abs(),
                randn(7, D, dtype=dtype, seed=5).abs(),
                randn(K, D, dtype=dtype, seed=6).abs(),
            ),
            {"mode": "similarity", "normalize": "row"},
            grad=(0, 1, 2),
        )
    ]


register(
    Case(
        name="softmaxkit.heads.concept_matrix_search",
        op=H.concept_matrix_search,
        samples=cms_samples,
        reference=lambda a, b, c, **kw: concept_ref.cms_scores(np64(a), np64(b), np64(c), **kw),
        keeps_dtype=False,  # float32 scores for half inputs
        tol=HALF_TOL,
        empty=lambda: Sample((randn(0, D), randn(7, D, seed=5), randn(K, D, seed=6)), grad=(0,)),
        bad=[
            Bad({"mode": "mean"}, ValueError, "mode"),
            Bad({"normalize": "both"}, ValueError, "normalize"),
        ],
    )
)
