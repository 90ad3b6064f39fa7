"""Miniature of examples/moe_temperature_claim.py (seconds): the fit runs on data simulated
from the paper's softmax-gated Gaussian MoE and the expert-parameter error shrinks with n
for both gates. The rates of the full run are in the report / README; they are measured,
not asserted here beyond "the expert error decreases"."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def claim():
    spec = importlib.util.spec_from_file_location(
        "moe_temperature_claim", ROOT / "examples" / "moe_temperature_claim.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_expert_error_shrinks_with_n(claim):
    result = claim.run([200, 3200], repeats=3)
    for kind, r in result.items():
        assert r["experts"][1] < r["experts"][0], kind
        assert r["rate_experts"] < -0.2, (kind, r["rate_experts"])


def test_truth_is_near_a_likelihood_maximum(claim):
    import torch

    gen = torch.Generator().manual_seed(1)
    for kind in ("dense_to_sparse", "activation"):
        x, y = claim.sample(kind, 4000, gen)
        model = claim.GaussianMoE(kind)
        model.set(claim.TRUE)
        with torch.no_grad():
            at_truth = float(model.log_likelihood(x, y))
        fitted = claim.GaussianMoE(kind)
        fitted.set(claim.fit(kind, x, y, gen))
        with torch.no_grad():
            assert float(fitted.log_likelihood(x, y)) >= at_truth - 1e-9
