"""Test (l) of the contract (extreme magnitudes) below float32's maximum, for the vocab-parallel
cases that skip it at 3e38 because their result there is an average of per-row values
beyond the dtype's range (``cases_distributed.BEYOND_RANGE``)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.contract import cases_distributed
from tests.contract import test_contract as contract

BELOW_MAX = [(d, m) for d, m in contract.EXTREMES if m < 1e38]
CASES = [
    dataclasses.replace(case, skip={})
    for case in contract.CASES
    if case.skip.get("magnitude") == cases_distributed.BEYOND_RANGE
]


@pytest.mark.parametrize("dtype,magnitude", BELOW_MAX, ids=[f"{d}-{m:g}" for d, m in BELOW_MAX])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_extreme_magnitudes_below_the_maximum(case, dtype, magnitude):
    assert case.magnitude, f"{case.name}: magnitude= names the positions to scale"
    contract.test_extreme_magnitudes(case, dtype, magnitude)


def test_the_cases_are_found():
    assert len(CASES) == 2
