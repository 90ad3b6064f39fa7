"""Key-space diagnostics (Peng, An & Shang 2025): reference, constructed answers, invariances,
dtypes, shapes, memory, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from softmaxkit.dynamics import KeySpaceReport, KeySpaceSummary, key_space_report
from softmaxkit.dynamics import key_space as ks
from tests.reference import key_space_ref as ref


def _data(v: int, d: int, n: int, seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(v, d, generator=g, dtype=torch.float64)
    queries = scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    return keys, queries


def _clustered(v: int, d: int, n: int, clusters: int, seed: int = 0):
    """Keys in tight clusters; queries near one key each."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, d, generator=g, dtype=torch.float64)
    member = torch.arange(v) % clusters
    keys = centers[member] + 0.3 * torch.randn(v, d, generator=g, dtype=torch.float64)
    which = torch.randint(v, (n,), generator=g)
    queries = 3.0 * keys[which] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return keys, queries


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"top": 3, "window": 20, "neighbours": 7, "mass_ranks": 30},
        {"top": 1, "window": 500, "neighbours": 299, "mass_ranks": 1000},  # cut at V = 300
    ],
)
def test_matches_float64_reference(kwargs):
    keys, queries = _data(300, 12, 25, seed=1)
    got = key_space_report(keys, queries, **kwargs)
    top1, rho, share, chance = ref.report(keys.numpy(), queries.numpy(), **kwargs)
    assert got.top1.tolist() == top1
    np.testing.assert_allclose(got.spearman.numpy(), rho, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.neighbour_share.numpy(), share, rtol=1e-9, atol=1e-15)
    assert got.chance_share == pytest.approx(chance)
    assert got.spearman.dtype == torch.float64 and got.top1.dtype == torch.int64


def test_summaries_are_nan_aware_mean_and_quantiles():
    keys, queries = _data(200, 8, 40, seed=2)
    r = key_space_report(keys, queries, top=2, window=30, neighbours=4, quantiles=(0.0, 0.5, 1))
    for values, summary in ((r.spearman, r.spearman_summary), (r.neighbour_share, r.share_summary)):
        assert isinstance(summary, KeySpaceSummary)
        torch.testing.assert_close(summary.mean, values.mean())
        torch.testing.assert_close(summary.quantiles, torch.quantile(values, r.levels))
        assert summary.defined.item() == 40
    assert r.levels.tolist() == [0.0, 0.5, 1.0]


def test_unit_keys_and_a_query_at_a_key_give_rho_one_and_the_exact_share():
    """Unit keys, q = s * k_t: z_v = s cos(k_v, k_t), so probability and similarity rank the
    tokens alike (rho = 1) and the k nearest keys are exactly ranks 2 .. k + 1."""
    g = torch.Generator().manual_seed(3)
    keys = F.normalize(torch.randn(400, 10, generator=g, dtype=torch.float64), dim=1)
    s, k, r = 6.0, 5, 40
    out = key_space_report(keys, s * keys[:6], top=4, window=30, neighbours=k, mass_ranks=r)
    assert out.top1.tolist() == list(range(6))
    torch.testing.assert_close(out.spearman, torch.ones(6, dtype=torch.float64))
    for i in range(6):
        z = (s * keys[i] @ keys.T).sort(descending=True).values
        p = torch.softmax(z, 0)
        torch.testing.assert_close(out.neighbour_share[i], p[1 : k + 1].sum() / p[1:r].sum())


def test_a_constructed_anticorrelated_key_space_gives_rho_minus_one():
    """Keys (v, v^2): the logit along e1 grows with v while the cosine to the top key (on e1)
    shrinks, so rho = -1; the nearest key to e1 is v = 1, ranked last: share 0 for k = 1."""
    v = torch.arange(1, 51, dtype=torch.float64)
    keys = torch.cat([torch.tensor([[1000.0, 0.0]]), torch.stack([v, v * v], 1)])
    q = torch.tensor([[0.05, 0.0]], dtype=torch.float64)
    out = key_space_report(keys, q, top=1, window=49, neighbours=1, mass_ranks=10)
    assert out.top1.item() == 0
    assert out.spearman.item() == pytest.approx(-1.0)
    assert out.neighbour_share.item() == 0.0


def test_clustered_keys_pull_the_middle_ranks_and_random_keys_do_not():
    """The paper's finding in miniature: with clustered keys the middle ranks follow the
    similarity to the top key and its neighbours hold far more mass than chance."""
    keys, queries = _clustered(2000, 16, 60, clusters=40, seed=4)
    clustered = key_space_report(keys, queries, neighbours=50)
    g = torch.Generator().manual_seed(5)
    rand_keys = torch.randn_like(keys).normal_(generator=g)
    control = key_space_report(rand_keys, queries, neighbours=50)
    assert clustered.spearman_summary.mean > 0.5
    assert clustered.spearman_summary.mean > control.spearman_summary.mean + 0.3
    assert clustered.share_summary.mean > 10 * clustered.chance_share
    assert clustered.share_summary.mean > control.share_summary.mean + 0.3


def test_default_neighbours_is_the_official_cluster_size():
    keys, queries = _data(3000, 4, 3)
    out = key_space_report(keys, queries)
    assert out.chance_share == pytest.approx(math.ceil(3000 / 1024) / 2999)
    torch.testing.assert_close(
        out.neighbour_share, key_space_report(keys, queries, neighbours=3).neighbour_share
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(0.05, 20.0),
    qscale=st.floats(0.05, 20.0),
)
def test_positive_scalings_keep_top1_and_rho(seed, scale, qscale):
    keys, queries = _data(150, 6, 8, seed=seed)
    base = key_space_report(keys, queries, top=3, window=40, neighbours=5)
    scaled = key_space_report(scale * keys, qscale * queries, top=3, window=40, neighbours=5)
    assert torch.equal(base.top1, scaled.top1)
    torch.testing.assert_close(scaled.spearman, base.spearman, rtol=1e-9, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_permuting_the_vocabulary_and_rotating_the_space_change_nothing(seed):
    keys, queries = _data(120, 5, 6, seed=seed)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(120, generator=g)
    rot = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64)).Q
    kw = {"top": 2, "window": 30, "neighbours": 4, "mass_ranks": 50}
    base = key_space_report(keys, queries, **kw)
    permuted = key_space_report(keys[perm], queries, **kw)
    rotated = key_space_report(keys @ rot, queries @ rot, **kw)
    assert torch.equal(perm[permuted.top1], base.top1)
    assert torch.equal(rotated.top1, base.top1)
    for other in (permuted, rotated):
        torch.testing.assert_close(other.spearman, base.spearman, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(
            other.neighbour_share, base.neighbour_share, rtol=1e-8, atol=1e-12
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_is_computed_in_float32(dtype):
    keys, queries = _data(500, 16, 10, seed=6)
    keys, queries = keys.to(dtype), queries.to(dtype)
    out = key_space_report(keys, queries)
    same = key_space_report(keys.float(), queries.float())
    assert out.spearman.dtype == torch.float32 and out.neighbour_share.dtype == torch.float32
    torch.testing.assert_close(out.spearman, same.spearman)
    torch.testing.assert_close(out.neighbour_share, same.neighbour_share)
    wide = key_space_report(keys.double(), queries.double())  # same values, float64
    assert (out.top1 == wide.top1).float().mean() >= 0.9
    agree = out.top1 == wide.top1
    torch.testing.assert_close(
        out.spearman[agree].double(), wide.spearman[agree], atol=0.05, rtol=0
    )


def test_mixed_dtypes_compute_in_the_widest():
    keys, queries = _data(100, 4, 3, seed=7)
    out = key_space_report(keys.to(torch.bfloat16), queries)
    assert out.spearman.dtype == torch.float64


def test_shapes_empty_batch_and_a_single_query():
    keys, queries = _data(200, 8, 6, seed=8)
    out = key_space_report(keys, queries.reshape(2, 3, 8))
    assert out.top1.shape == out.spearman.shape == out.neighbour_share.shape == (2, 3)
    flat = key_space_report(keys, queries)
    torch.testing.assert_close(out.spearman.reshape(-1), flat.spearman)
    single = key_space_report(keys, queries[0])
    assert single.spearman.shape == () and single.spearman == flat.spearman[0]
    empty = key_space_report(keys, queries[:0])
    assert empty.spearman.shape == (0,) and empty.top1.shape == (0,)
    for summary in (empty.spearman_summary, empty.share_summary):
        assert summary.defined.item() == 0
        assert torch.isnan(summary.mean) and torch.isnan(summary.quantiles).all()


def test_undefined_correlation_is_nan_and_left_out_of_the_summary():
    keys, queries = _data(60, 4, 3, seed=9)
    keys[0] = 0.0  # a zero key: cosine 0 with every key
    queries[0] = -50 * keys[1:].mean(0)  # a query that is not aligned with any key ...
    keys[0] = 0.0
    out = key_space_report(keys, torch.cat([queries, torch.zeros(1, 4, dtype=keys.dtype)]))
    # a zero query: every logit 0, so every probability ties: rho undefined
    assert torch.isnan(out.spearman[-1])
    assert out.spearman_summary.defined.item() == int((~torch.isnan(out.spearman)).sum())
    torch.testing.assert_close(out.spearman_summary.mean, torch.nanmean(out.spearman))


def test_queries_are_processed_in_bounded_blocks(monkeypatch):
    """V = 50k: no block holds more than about 2**20 logits (no (B, V) or (B, V, V) tensor)."""
    sizes = []
    real = ks._block

    def spy(keys, unit, q, params):
        sizes.append(q.shape[0] * keys.shape[0])
        return real(keys, unit, q, params)

    monkeypatch.setattr(ks, "_block", spy)
    keys, queries = _data(50_000, 8, 50, seed=10)
    out = key_space_report(keys.float(), queries.float())
    assert out.spearman.shape == (50,) and torch.isfinite(out.neighbour_share).all()
    assert len(sizes) > 1 and max(sizes) <= 2**20 + 50_000


def test_no_gradient_is_recorded():
    keys, queries = _data(100, 4, 3, seed=11)
    keys.requires_grad_(True)
    out = key_space_report(keys, queries)
    assert not out.spearman.requires_grad and not out.neighbour_share.requires_grad


def test_result_types():
    keys, queries = _data(100, 4, 3, seed=12)
    out = key_space_report(keys, queries)
    assert isinstance(out, KeySpaceReport) and isinstance(out.chance_share, float)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"output_weight": torch.zeros(20, 4, dtype=torch.long)}, TypeError, "output_weight"),
        ({"output_weight": torch.zeros(20)}, ValueError, "output_weight"),
        ({"output_weight": torch.zeros(11, 4)}, ValueError, "output_weight"),  # < top + 2
        ({"queries": [1.0] * 4}, TypeError, "queries"),
        ({"queries": torch.zeros(3, 5)}, ValueError, "queries"),
        ({"queries": torch.tensor(1.0)}, ValueError, "queries"),
        ({"top": 0}, ValueError, "top"),
        ({"top": 1.5}, TypeError, "top"),
        ({"window": 1}, ValueError, "window"),
        ({"neighbours": 0}, ValueError, "neighbours"),
        ({"neighbours": 20}, ValueError, "neighbours"),
        ({"mass_ranks": 1}, ValueError, "mass_ranks"),
        ({"quantiles": (0.5, 1.5)}, ValueError, "quantiles[1]"),
        ({"quantiles": "0.5"}, TypeError, "quantiles"),
    ],
)
def test_errors_name_the_argument(kwargs, error, name):
    args = {"output_weight": torch.randn(20, 4), "queries": torch.randn(3, 4), **kwargs}
    with pytest.raises(error, match=name.replace("[", r"\[").replace("]", r"\]")):
        key_space_report(args.pop("output_weight"), args.pop("queries"), **args)


def test_demo_miniature_trained_keys_pull_more_than_random_keys():
    """examples/key_space_demo.py in miniature: a word-level LM trained for 150 steps on
    CPython's documentation text; its middle ranks follow the key similarity to the top-1
    word more than the same queries against random keys of the same norms do."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "key_space_demo.py"
    spec = importlib.util.spec_from_file_location("key_space_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = demo.run(vocab=200, steps=150, queries=100, neighbours=10)
    finally:
        torch.set_num_threads(threads)
    trained, control, untrained = result["rows"]
    assert [r["keys"] for r in result["rows"]] == ["trained", "random keys (control)", "untrained"]
    assert trained["spearman_mean"] > control["spearman_mean"] + 0.05
    assert trained["lift"] > 1.5 * control["lift"]
    assert trained["lift"] > untrained["lift"]
