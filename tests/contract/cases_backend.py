"""Contract cases of the backend switch (``softmaxkit.set_backend``, ``get_backend``,
``use_backend``): they take no tensor, so only the bad-argument test applies; the backend's
own tests are ``tests/compile/``."""

from __future__ import annotations

import torch

import softmaxkit
from tests.contract.registry import Bad, Case, Sample, register

NO_TENSOR = "takes no tensor: tests/compile/test_backend.py checks it"
SKIP = {
    name: NO_TENSOR
    for name in ("dtypes", "noncontiguous", "empty", "compile", "gradcheck", "reference")
}


def _use(name):
    """Enter and leave ``use_backend(name)``; returns the backend seen inside."""
    with softmaxkit.use_backend(name):
        return softmaxkit.get_backend()


def case(name, op, samples, bad):
    return Case(
        name=name,
        op=op,
        samples=lambda dtype: samples,
        reference=None,
        no_reference=NO_TENSOR,
        dtypes=(torch.float64,),
        noncontiguous=False,
        compile=False,
        gradcheck=False,
        keeps_dtype=False,
        bad=bad,
        skip=SKIP,
    )


BAD_NAME = [
    Bad({}, ValueError, "name", args={0: "inductor"}),
    Bad({}, TypeError, "name", args={0: 1}),
]

register(
    case("softmaxkit.set_backend", softmaxkit.set_backend, [Sample(("eager",))], BAD_NAME),
    case("softmaxkit.get_backend", softmaxkit.get_backend, [Sample(())], []),
    case("softmaxkit.use_backend", _use, [Sample(("eager",))], BAD_NAME),
)
