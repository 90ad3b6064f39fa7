"""Contract cases of the maps: ``softmaxkit.functional`` (re-exported at the top level) and
their module twins, plus the spherical / Taylor maps (in ``losses`` today, ``functional``
once they move there)."""

from __future__ import annotations

import dataclasses

import torch

from softmaxkit import functional as F
from softmaxkit import losses as L
from tests.contract.inputs import keep, np64, randn
from tests.contract.registry import Bad, Case, Sample, register
from tests.reference import contract_ref, entmax_ref, maps_ref, spherical_ref

TWIN_COMPILE = "module twin: its functional is compiled"
TWIN_GRADCHECK = "module twin: the same autograd path is gradchecked on its functional"


def twin(base: Case, name: str, op, **changes) -> Case:
    """The module twin of ``base``: same samples and reference, not compiled again."""
    skip = {
        **base.skip,
        "compile": TWIN_COMPILE,
        "gradcheck": TWIN_GRADCHECK,
        **changes.pop("skip", {}),
    }
    return dataclasses.replace(base, name=name, op=op, compile=False, skip=skip, **changes)


def mask_np(mask):
    return None if mask is None else mask.numpy()


def plain(dtype):
    """A (3, 5) and a (2, 4, 3) input."""
    return randn(3, 5, dtype=dtype), randn(2, 4, 3, dtype=dtype, seed=1)


def empty_rows():
    return Sample((randn(0, 5),), grad=(0,))


BAD_X = [
    Bad({}, TypeError, "x", args={0: [[1.0, 2.0]]}),
    Bad({"dim": 2}, ValueError, "dim"),
]


# ----------------------------------------------------------------- softmax, log_softmax


def softmax_samples(log: bool):
    def samples(dtype):
        x, x3 = plain(dtype)
        # -inf outputs of a masked log map have no finite differences: no gradcheck there
        masked_grad = () if log else (0,)
        return [
            Sample((x,), grad=(0,)),
            Sample((x3,), {"temperature": 0.5, "mask": keep(2, 4, 3)}, grad=masked_grad),
        ]

    return samples


def torch_softmax(log: bool):
    def baseline(x, dim=-1, temperature=1.0, mask=None):
        if mask is not None:
            return None
        return (torch.log_softmax if log else torch.softmax)(x / temperature, dim)

    return baseline


def softmax_case(name, op, log):
    ref = maps_ref.log_softmax if log else maps_ref.softmax
    return Case(
        name=name,
        op=op,
        samples=softmax_samples(log),
        reference=lambda x, dim=-1, temperature=1.0, mask=None: ref(
            np64(x), temperature, mask_np(mask)
        ),
        baseline=torch_softmax(log),
        dim=True,
        empty=empty_rows,
        magnitude=(0,),
        masked_row="-inf" if log else "zeros",
        bad=[
            *BAD_X,
            Bad({"temperature": 0.0}, ValueError, "temperature"),
            Bad({"mask": torch.ones(3, 5)}, TypeError, "mask"),
        ],
    )


softmax = softmax_case("softmaxkit.functional.softmax", F.softmax, log=False)
log_softmax = softmax_case("softmaxkit.functional.log_softmax", F.log_softmax, log=True)
register(
    softmax,
    log_softmax,
    twin(
        softmax,
        "softmaxkit.functional.Softmax",
        lambda x, dim=-1, temperature=1.0, mask=None: F.Softmax(dim, temperature)(x, mask),
    ),
    twin(
        log_softmax,
        "softmaxkit.functional.LogSoftmax",
        lambda x, dim=-1, temperature=1.0, mask=None: F.LogSoftmax(dim, temperature)(x, mask),
    ),
)


# -------------------------------------------------------------------------- two-pass


def two_pass_samples(dtype):
    x, x3 = plain(dtype)
    return [Sample((x,), grad=(0,)), Sample((x3,), {"chunk_size": 2}, grad=(0,))]


def two_pass_case(name, op, log):
    ref = maps_ref.log_softmax if log else maps_ref.softmax
    return Case(
        name=name,
        op=op,
        samples=two_pass_samples,
        reference=lambda x, dim=-1, chunk_size=None: ref(np64(x)),
        baseline=lambda x, dim=-1, chunk_size=None: (torch.log_softmax if log else torch.softmax)(
            x, dim
        ),
        dim=True,
        empty=empty_rows,
        magnitude=(0,),
        masked_row="-inf" if log else "zeros",
        bad=[*BAD_X, Bad({"chunk_size": 0}, ValueError, "chunk_size")],
    )


register(
    two_pass_case("softmaxkit.functional.two_pass_softmax", F.two_pass_softmax, log=False),
    two_pass_case("softmaxkit.functional.two_pass_log_softmax", F.two_pass_log_softmax, log=True),
)


# ------------------------------------------------------------------------- stablemax


def stablemax_case(name, op, log):
    ref = contract_ref.log_stablemax if log else contract_ref.stablemax

    def samples(dtype):
        x, x3 = plain(dtype)
        return [
            Sample((x,), grad=(0,)),
            Sample((x3,), {"mask": keep(2, 4, 3)}, grad=() if log else (0,)),
        ]

    return Case(
        name=name,
        op=op,
        samples=samples,
        reference=lambda x, dim=-1, mask=None: ref(np64(x), mask_np(mask)),
        dim=True,
        empty=empty_rows,
        magnitude=(0,),
        masked_row="-inf" if log else "zeros",
        bad=[*BAD_X, Bad({"mask": torch.ones(3, 5)}, TypeError, "mask")],
    )


stablemax = stablemax_case("softmaxkit.functional.stablemax", F.stablemax, log=False)
log_stablemax = stablemax_case("softmaxkit.functional.log_stablemax", F.log_stablemax, log=True)
register(
    stablemax,
    log_stablemax,
    twin(
        stablemax,
        "softmaxkit.functional.StableMax",
        lambda x, dim=-1, mask=None: F.StableMax(dim)(x, mask),
    ),
    twin(
        log_stablemax,
        "softmaxkit.functional.LogStableMax",
        lambda x, dim=-1, mask=None: F.LogStableMax(dim)(x, mask),
    ),
)


# ------------------------------------------------------------------- clipped softmax


def clipped_samples(dtype):
    x, x3 = plain(dtype)
    return [
        Sample((x,), grad=(0,)),
        Sample((x3,), {"gamma": -0.1, "zeta": 1.1}, grad=(0,)),
    ]


clipped = Case(
    name="softmaxkit.functional.clipped_softmax",
    op=F.clipped_softmax,
    samples=clipped_samples,
    reference=lambda x, dim=-1, gamma=-0.025, zeta=1.0, mask=None: maps_ref.clipped_softmax(
        np64(x), gamma, zeta
    ),
    dim=True,
    empty=empty_rows,
    magnitude=(0,),
    masked_row="zeros",
    bad=[
        *BAD_X,
        Bad({"gamma": 0.5}, ValueError, "gamma"),
        Bad({"zeta": 0.5}, ValueError, "zeta"),
    ],
)
register(
    clipped,
    twin(
        clipped,
        "softmaxkit.functional.ClippedSoftmax",
        lambda x, dim=-1, gamma=-0.025, zeta=1.0, mask=None: F.ClippedSoftmax(
            dim, gamma=gamma, zeta=zeta
        )(x, mask),
    ),
    Case(
        name="softmaxkit.functional.clipped_softmax_gamma",
        op=F.clipped_softmax_gamma,
        samples=lambda dtype: [Sample((12, 512)), Sample((4.0, 128))],
        reference=lambda alpha, seq_len: -alpha / seq_len,
        dtypes=(torch.float64,),
        noncontiguous=False,
        compile=False,
        gradcheck=False,
        bad=[
            Bad({}, ValueError, "seq_len", args={1: 0}),
            Bad({}, ValueError, "alpha", args={0: -1.0}),
        ],
        skip={
            "compile": "returns a Python float of two Python numbers",
            "gradcheck": "returns a Python float of two Python numbers",
            "noncontiguous": "takes no tensor",
            "empty": "takes no tensor",
        },
    ),
)


# ----------------------------------------------------------------------------- top-k


def topk_samples(dtype):
    x, x3 = plain(dtype)
    return [
        Sample((x, 3), grad=(0,)),
        Sample((x3, 2), {"normalize": "softmax_then_topk"}, grad=(0,)),
        Sample((x, 2), {"return_indices": True}, grad=(0,)),
    ]


def topk_ref(x, k, dim=-1, normalize="topk_then_softmax", return_indices=False):
    values = maps_ref.topk_softmax(np64(x), k, normalize)
    if return_indices:
        return values, contract_ref.topk_indices(np64(x), k)
    return values


topk = Case(
    name="softmaxkit.functional.topk_softmax",
    op=F.topk_softmax,
    samples=topk_samples,
    reference=topk_ref,
    dim=True,
    empty=lambda: Sample((randn(0, 5), 2), grad=(0,)),
    magnitude=(0,),
    masked_row="zeros",
    bad=[
        *BAD_X,
        Bad({}, ValueError, "k", args={1: 0}),
        Bad({"normalize": "nope"}, ValueError, "normalize"),
        Bad({"return_indices": 1}, TypeError, "return_indices"),
    ],
)
register(
    topk,
    twin(
        topk,
        "softmaxkit.functional.TopKSoftmax",
        lambda x, k, dim=-1, normalize="topk_then_softmax": F.TopKSoftmax(
            k, dim, normalize=normalize
        )(x),
        samples=lambda dtype: topk_samples(dtype)[:2],
        bad=topk.bad[:-1],  # the module takes no return_indices
    ),
)


# --------------------------------------------------------------------------- gumbel


def gumbel(logits, tau=1.0, *, hard=False, dim=-1, seed=0):
    """gumbel_softmax with a fresh generator seeded ``seed``: deterministic per call."""
    g = torch.Generator().manual_seed(seed)
    return F.gumbel_softmax(logits, tau, hard=hard, dim=dim, generator=g)


def gumbel_twin(logits, tau=1.0, *, hard=False, dim=-1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.GumbelSoftmax(tau, hard=hard, dim=dim)(logits, g)


def gumbel_samples(dtype):
    x, x3 = plain(dtype)
    return [
        Sample((x,), grad=(0,)),
        Sample((x3, 0.5), {"seed": 3}, grad=(0,)),
        # straight-through: the forward value is piecewise constant, no finite differences
        Sample((x, 0.5), {"hard": True, "seed": 4}),
    ]


gumbel_case = Case(
    name="softmaxkit.functional.gumbel_softmax",
    op=gumbel,
    samples=gumbel_samples,
    reference=lambda logits, tau=1.0, *, hard=False, dim=-1, seed=0: contract_ref.gumbel_softmax(
        np64(logits), tau, seed, hard
    ),
    dim=False,
    empty=empty_rows,
    compile=False,
    magnitude=(0,),
    masked_row="zeros",
    bad=[
        Bad({}, TypeError, "logits", args={0: [[1.0, 2.0]]}),
        Bad({"dim": 2}, ValueError, "dim"),
        Bad({"tau": 0.0}, ValueError, "tau"),
        Bad({"hard": 1}, TypeError, "hard"),
    ],
    skip={
        "dim": "the noise is drawn in the memory order of the tensor: a moved axis is another "
        "sample",
        "compile": "a seeded torch.Generator is built per call (not traceable); "
        "tests/functional/test_compile.py compiles gumbel_softmax without one",
    },
)
register(
    gumbel_case,
    twin(gumbel_case, "softmaxkit.functional.GumbelSoftmax", gumbel_twin),
)


# ------------------------------------------------------------------ sparsemax, entmax


def entmax_samples(dtype):
    x, x3 = plain(dtype)
    return [Sample((x,), grad=(0,)), Sample((x3 * 2,), grad=(0,))]


def entmax_case(name, op, ref):
    return Case(
        name=name,
        op=op,
        samples=entmax_samples,
        reference=lambda x, dim=-1: ref(np64(x)),
        dim=True,
        empty=empty_rows,
        magnitude=(0,),
        masked_row="zeros",
        bad=BAD_X,
    )


sparsemax = entmax_case("softmaxkit.functional.sparsemax", F.sparsemax, entmax_ref.sparsemax)
entmax15 = entmax_case("softmaxkit.functional.entmax15", F.entmax15, entmax_ref.entmax15)


def bisect_samples(dtype):
    x, x3 = plain(dtype)
    return [
        Sample((x,), grad=(0,)),
        Sample((x3, 1.3), {"dim": -1}, grad=(0,)),
        Sample((x, 2.0), {"n_iter": 60}, grad=(0,)),
    ]


bisect = Case(
    name="softmaxkit.functional.entmax_bisect",
    op=F.entmax_bisect,
    samples=bisect_samples,
    reference=lambda x, alpha=1.5, dim=-1, n_iter=50: entmax_ref.entmax(np64(x), alpha),
    dim=True,
    empty=empty_rows,
    magnitude=(0,),
    masked_row="zeros",
    tol={torch.float64: {"atol": 1e-9, "rtol": 1e-7}},
    bad=[
        *BAD_X,
        Bad({"alpha": 1.0}, ValueError, "alpha"),
        Bad({"n_iter": 0}, ValueError, "n_iter"),
    ],
)
register(
    sparsemax,
    entmax15,
    bisect,
    twin(sparsemax, "softmaxkit.functional.Sparsemax", lambda x, dim=-1: F.Sparsemax(dim)(x)),
    twin(entmax15, "softmaxkit.functional.Entmax15", lambda x, dim=-1: F.Entmax15(dim)(x)),
    twin(
        bisect,
        "softmaxkit.functional.EntmaxBisect",
        lambda x, alpha=1.5, dim=-1, n_iter=50: F.EntmaxBisect(alpha, dim, n_iter)(x),
    ),
)


# ------------------------------------------------- spherical and Taylor softmax maps

EPS = 1e-3


def spherical_samples(dtype):
    x, x3 = plain(dtype)
    return [Sample((x,), {"eps": EPS}, grad=(0,)), Sample((x3,), {"eps": 0.5}, grad=(0,))]


def taylor_samples(dtype):
    x, x3 = plain(dtype)
    return [Sample((x,), grad=(0,)), Sample((x3,), grad=(0,))]


def spherical_map_case(name, op):
    return Case(
        name=name,
        op=op,
        samples=spherical_samples,
        reference=lambda x, *, eps, dim=-1: spherical_ref.spherical_softmax(np64(x), eps),
        dim=True,
        empty=lambda: Sample((randn(0, 5),), {"eps": EPS}, grad=(0,)),
        magnitude=(0,),
        bad=[
            Bad({}, TypeError, "x", args={0: [[1.0, 2.0]]}),
            Bad({"dim": 2}, ValueError, "dim"),
            Bad({"eps": -1.0}, ValueError, "eps"),
        ],
    )


def taylor_map_case(name, op):
    return Case(
        name=name,
        op=op,
        samples=taylor_samples,
        reference=lambda x, *, dim=-1: spherical_ref.taylor_softmax(np64(x)),
        dim=True,
        empty=empty_rows,
        magnitude=(0,),
        bad=BAD_X,
    )


for package in (F, L):
    for map_name, make in (
        ("spherical_softmax", spherical_map_case),
        ("taylor_softmax", taylor_map_case),
    ):
        fn = getattr(package, map_name, None)
        if fn is not None and map_name in package.__all__:
            register(make(f"{package.__name__}.{map_name}", fn))
