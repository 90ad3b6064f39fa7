"""Contract cases of PALM's training loss (``softmaxkit.ood.PALMLoss`` and its output type).

The loss is a module with a prototype buffer; each case builds one in training mode, sets
its prototypes from the sample's (fixed, seeded) tensor and returns its
:class:`~softmaxkit.ood.PALMLossOutput` (the shared tests compare ``loss``, the first
field). The reference is the float64 transcription of the official loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from softmaxkit import ood
from tests.contract.inputs import labels, rand, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import palm_ref

B, D, C, CACHE = 5, 6, 3, 4


def _protos(seed: int = 11) -> torch.Tensor:
    """The official initialisation (uniform in [0, 1)^d, L2-normalised), float64."""
    return F.normalize(rand(C * CACHE, D, seed=seed), dim=-1)


def palm(features, y, **options):
    """PALMLoss(C, D, cache_size=CACHE) in training mode, prototypes = ``_protos()``."""
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    crit = ood.PALMLoss(C, D, cache_size=CACHE, **options).to(features.device, dtype)
    crit.prototypes.copy_(_protos())
    return crit(features, y)


def palm_reference(features, y, **options):
    options = dict(options)
    if options.pop("normalize", True):
        features = F.normalize(features.double(), dim=-1)
    if features.dim() == 2:
        features = features[:, None]
    renamed = {"temperature": "temp", "sinkhorn_iterations": "iterations"}
    options = {renamed.get(k, k): v for k, v in options.items()}
    loss, mle, pcon, _ = palm_ref.palm_ref(
        features.double(), y, _protos(), num_classes=C, cache_size=CACHE, **options
    )
    return [loss.detach(), mle.detach(), pcon.detach()]


def samples(dtype):
    return [
        Sample((randn(B, 2, D, dtype=dtype), labels(B, classes=C)), grad=(0,)),
        Sample(
            (randn(B + 2, D, dtype=dtype, seed=3), labels(B + 2, classes=C, seed=4)),
            {"k": 2, "proto_m": 0.9, "lambda_pcon": 0.5},
            grad=(0,),
        ),
        Sample(
            (randn(B, 3, D, dtype=dtype, seed=5), labels(B, classes=C, seed=6)),
            {"k": 0, "temperature": 0.5, "epsilon": 0.1, "sinkhorn_iterations": 5},
            grad=(0,),
        ),
    ]


BAD = [
    Bad({"k": -1}, ValueError, "k"),
    Bad({"proto_m": 1.5}, ValueError, "proto_m"),
    Bad({"temperature": 0.0}, ValueError, "temperature"),
    Bad({"epsilon": -0.1}, ValueError, "epsilon"),
    Bad({"sinkhorn_iterations": -1}, ValueError, "sinkhorn_iterations"),
    Bad({"lambda_pcon": -1.0}, ValueError, "lambda_pcon"),
    Bad({"normalize": 1}, TypeError, "normalize"),
    Bad({}, ValueError, "features", args={0: torch.zeros(B, 2, D + 1)}),
    Bad({}, TypeError, "features", args={0: torch.zeros(B, 2, D, dtype=torch.long)}),
    Bad({}, ValueError, "labels", args={1: torch.full((B,), C)}),
    Bad({}, ValueError, "labels", args={1: torch.zeros(B + 1, dtype=torch.long)}),
]

TOL = {
    torch.float16: {"atol": 2e-2, "rtol": 1e-2},
    torch.bfloat16: {"atol": 1e-1, "rtol": 5e-2},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
}
GRADCHECK = (
    "the official loss stops the gradient through the Sinkhorn assignment and the top-k "
    "(they depend on the features, so finite differences see them): tests/ood/test_palm.py "
    "gradchecks with the assignment frozen and compares the gradient with the reference's"
)
EMPTY = (
    "the prototype-contrastive term does not depend on the batch: an empty batch gives "
    "loss = lambda_pcon * proto_contra, not 0 (mle = 0; tests/ood/test_palm.py)"
)

register(
    Case(
        name="softmaxkit.ood.PALMLoss",
        op=palm,
        samples=samples,
        reference=palm_reference,
        labels={1: "labels"},
        magnitude=(0,),
        tol=TOL,
        bad=BAD,
        skip={"empty": EMPTY, "gradcheck": GRADCHECK},
    ),
    Case(
        name="softmaxkit.ood.PALMLossOutput",
        op=palm,
        samples=lambda dtype: samples(dtype)[:1],
        reference=palm_reference,
        tol=TOL,
        bad=BAD[:1],
        skip={"empty": EMPTY, "gradcheck": GRADCHECK},
    ),
)
