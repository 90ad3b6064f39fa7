import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from softmaxkit.heads.knnlm import KNNLM
from tests.helpers import HALF_DTYPES

gen = torch.Generator().manual_seed(11)


def store(m=300, d=8, vocab=13, dtype=torch.float64):
    keys = torch.randn(m, d, generator=gen, dtype=dtype)
    values = torch.randint(0, vocab, (m,), generator=gen)
    return keys, values


# ---------------------------------------------------------------- float64 references
def ref_knn(keys, queries, k, metric):
    """Brute force over the full float64 distance matrix; ties broken by ascending index."""
    q, kk = queries.double().numpy(), keys.double().numpy()
    dist = ((q[:, None, :] - kk[None, :, :]) ** 2).sum(-1) if metric == "l2" else -(q @ kk.T)
    order = np.lexsort((np.broadcast_to(np.arange(len(kk)), dist.shape), dist), axis=1)[:, :k]
    return np.take_along_axis(dist, order, 1), order


def ref_knn_probs(dist, idx, values, vocab, temperature):
    w = -dist / temperature
    w = np.exp(w - w.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    out = np.zeros((dist.shape[0], vocab))
    for r in range(dist.shape[0]):
        for j in range(dist.shape[1]):
            out[r, values[idx[r, j]]] += w[r, j]
    return out


def ref_mix(p_knn, lm_logits, lam):
    z = lm_logits.double().numpy()
    p_lm = np.exp(z - z.max(-1, keepdims=True))
    p_lm /= p_lm.sum(-1, keepdims=True)
    return lam * p_knn + (1 - lam) * p_lm


# ---------------------------------------------------------------- search
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("chunk,qchunk", [(1, 1), (7, 3), (64, 5), (1000, 1000)])
def test_knn_matches_brute_force(metric, chunk, qchunk):
    keys, values = store()
    queries = torch.randn(11, 8, generator=gen, dtype=torch.float64)
    head = KNNLM(keys, values, 13, k=20, metric=metric, chunk_size=chunk, query_chunk_size=qchunk)
    dist, idx = head.knn(queries)
    rd, ri = ref_knn(keys, queries, 20, metric)
    np.testing.assert_array_equal(idx.numpy(), ri)
    np.testing.assert_allclose(dist.numpy(), rd, rtol=1e-12, atol=1e-12)
    assert dist.dtype == torch.float64 and idx.dtype == torch.long


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_knn_float32_matches_float64_truth(metric):
    keys, values = store(m=500, d=16, dtype=torch.float32)
    queries = torch.randn(9, 16, generator=gen)
    head = KNNLM(keys, values, 13, k=30, metric=metric, chunk_size=37)
    dist, idx = head.knn(queries)
    rd, ri = ref_knn(keys, queries, 30, metric)
    assert dist.dtype == torch.float32
    np.testing.assert_array_equal(idx.numpy(), ri)
    np.testing.assert_allclose(dist.numpy(), rd, rtol=1e-5, atol=1e-5)


def test_distances_recomputed_exactly_far_from_origin():
    # keys and queries far from the origin: |q|^2 - 2 q.k + |k|^2 in float32 would cancel
    # (errors ~1e-2 against distances ~1e-3); shifted by the keys' mean it ranks correctly,
    # and the returned distances, from sum((q - k)^2), keep their relative accuracy
    keys, values = store(m=200, d=16, dtype=torch.float32)
    keys = keys * 0.01 + 100.0
    queries = keys[:4] + 0.003
    dist, idx = KNNLM(keys, values, 13, k=5).knn(queries)
    rd, ri = ref_knn(keys, queries, 5, "l2")
    np.testing.assert_array_equal(idx.numpy(), ri)
    np.testing.assert_allclose(dist.numpy(), rd, rtol=1e-4)


def test_ties_sorted_by_index():
    # duplicated keys give exactly tied distances; within the returned k they come by index
    base = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    keys = torch.cat([base, base, base])  # rows i, i+3, i+6 are identical
    head = KNNLM(keys, torch.arange(9) % 5, 5, k=6, chunk_size=2)
    dist, idx = head.knn(torch.tensor([[0.1, 0.0]]))
    assert idx.tolist() == [[0, 3, 6, 1, 4, 7]]
    torch.testing.assert_close(dist, torch.tensor([[0.01] * 3 + [0.81] * 3]))


def test_leading_shape_and_empty():
    keys, values = store()
    head = KNNLM(keys, values, 13, k=4)
    q = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    dist, idx = head.knn(q)
    assert dist.shape == idx.shape == (2, 3, 4)
    _, flat = head.knn(q.reshape(6, 8))
    assert torch.equal(idx.reshape(6, 4), flat)
    d0, i0 = head.knn(torch.zeros(0, 8, dtype=torch.float64))
    assert d0.shape == i0.shape == (0, 4)
    assert head.knn_log_probs(torch.zeros(0, 8, dtype=torch.float64)).shape == (0, 13)


def test_chunked_search_never_builds_the_full_matrix(monkeypatch):
    keys, values = store(m=5000, d=4, dtype=torch.float32)
    head = KNNLM(keys, values, 13, k=8, chunk_size=256, query_chunk_size=16)
    seen = []
    original = KNNLM._chunk_scores

    def spy(self, q, chunk, dtype):
        out = original(self, q, chunk, dtype)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(KNNLM, "_chunk_scores", spy)
    head.knn(torch.randn(100, 4, generator=gen))
    assert max(seen) <= 16 * 256 < 100 * 5000
    assert len(seen) == math.ceil(5000 / 256) * math.ceil(100 / 16)


def test_default_chunks_follow_the_block_budget(monkeypatch):
    from softmaxkit.heads import knnlm

    monkeypatch.setattr(knnlm, "_BLOCK_ELEMENTS", 4096)
    keys, values = store(m=3000, d=64, dtype=torch.float32)
    head = KNNLM(keys, values, 13, k=8, query_chunk_size=16)
    assert head._chunk_rows(torch.float32) == 256  # 4096 distances per block
    assert head._chunk_rows(torch.float64) == 64  # and 4096 entries per float64 copy of keys
    head.k = 100
    assert head._chunk_rows(torch.float64) == 100  # never below k
    q = torch.randn(5, 64, generator=gen)
    rd, ri = ref_knn(keys, q, 100, "l2")
    np.testing.assert_array_equal(head.knn(q)[1].numpy(), ri)


def test_small_blocks_for_norms_mean_and_recompute(monkeypatch):
    from softmaxkit.heads import knnlm

    monkeypatch.setattr(knnlm, "_RECOMPUTE_ELEMENTS", 64)  # 8 rows of 8 per block
    keys, values = store(m=101)
    head = KNNLM(keys, values, 13, k=9, chunk_size=10)
    assert head.keys.data_ptr() == keys.data_ptr()  # the datastore is not copied
    torch.testing.assert_close(head.centre, keys.mean(0))
    torch.testing.assert_close(head.key_sq_norms, (keys - keys.mean(0)).square().sum(1))
    q = torch.randn(7, 8, generator=gen, dtype=torch.float64)
    rd, ri = ref_knn(keys, q, 9, "l2")
    dist, idx = head.knn(q)
    np.testing.assert_array_equal(idx.numpy(), ri)
    np.testing.assert_allclose(dist.numpy(), rd, rtol=1e-12)


def test_peak_memory_of_a_large_search_stays_far_below_n_by_m():
    # 200000 x 64 float32 keys, 512 queries: the full distance matrix would be 410 MB
    code = textwrap.dedent(
        """
        import resource, torch
        from softmaxkit.heads.knnlm import KNNLM
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(0)
        keys = torch.randn(200000, 64, generator=g)
        head = KNNLM(keys, torch.zeros(200000, dtype=torch.long), 2, k=16,
                     chunk_size=8192, query_chunk_size=128)
        q = torch.randn(512, 64, generator=g)
        head.knn(q[:1])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        head.knn(q)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    grown_mb = float(run.stdout.strip())
    assert grown_mb < 100, grown_mb


# ---------------------------------------------------------------- kNN distribution
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 7.0])
def test_knn_log_probs_match_reference(metric, temperature):
    keys, values = store()
    queries = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    head = KNNLM(keys, values, 13, k=25, temperature=temperature, metric=metric, chunk_size=50)
    got = head.knn_log_probs(queries)
    rd, ri = ref_knn(keys, queries, 25, metric)
    expected = ref_knn_probs(rd, ri, values.numpy(), 13, temperature)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(got.numpy(), np.log(expected), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.exp().sum(1), torch.ones(6, dtype=torch.float64))


def test_knn_log_probs_exact_minus_inf_and_tiny_masses():
    # one token far away: its log-probability is finite (about -1e4 / T), not -inf or -10000,
    # and tokens no neighbour carries are exactly -inf
    keys = torch.tensor([[0.0], [100.0]], dtype=torch.float64)
    head = KNNLM(keys, torch.tensor([1, 3]), 5, k=2)
    out = head.knn_log_probs(torch.tensor([[0.0]], dtype=torch.float64))
    assert out[0, 1].item() == pytest.approx(-math.exp(-1e4), abs=1e-300)
    assert out[0, 3].item() == pytest.approx(-1e4)
    assert torch.isneginf(out[0, [0, 2, 4]]).all()


# ---------------------------------------------------------------- interpolation
@pytest.mark.parametrize("lam", [0.0, 0.001, 0.25, 0.7, 1.0])
def test_interpolation_matches_plain_formula(lam):
    keys, values = store()
    queries = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    logits = torch.randn(5, 13, generator=gen, dtype=torch.float64) * 3
    head = KNNLM(keys, values, 13, k=10, lambda_=lam, temperature=2.0)
    out = head(queries, logits)
    rd, ri = ref_knn(keys, queries, 10, "l2")
    expected = ref_mix(ref_knn_probs(rd, ri, values.numpy(), 13, 2.0), logits, lam)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(out.numpy(), np.log(expected), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(5, dtype=torch.float64))
    same = head(queries, lm_log_probs=torch.log_softmax(logits, 1))
    torch.testing.assert_close(same, out)


def test_lambda_ends_are_exact():
    keys, values = store()
    queries = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    logits = torch.randn(4, 13, generator=gen, dtype=torch.float64)
    lm_only = KNNLM(keys, values, 13, k=3, lambda_=0.0)(queries, logits)
    assert torch.equal(lm_only, torch.log_softmax(logits, 1))
    head = KNNLM(keys, values, 13, k=3, lambda_=1.0)
    knn_only = head(queries, logits)
    assert torch.equal(knn_only, head.knn_log_probs(queries))
    assert torch.isneginf(knn_only).any()  # k=3 < 13 tokens: some have no kNN mass


def grad_lm(head, queries, lm, cot, **kw):
    lm = lm.detach().clone().requires_grad_(True)
    out = head(queries, **{kw.get("name", "lm_logits"): lm})
    (g,) = torch.autograd.grad(out, lm, cot)
    return g


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_gradients_wrt_lm_logits(lam):
    keys, values = store(m=40, d=3, vocab=6)
    queries = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    head = KNNLM(keys, values, 6, k=4, lambda_=lam)
    logits = torch.randn(3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    # finite outputs only in the cotangent: d(-inf)/dz is not a number to compare
    finite = torch.isfinite(head(queries, logits)).all()
    if finite:
        assert torch.autograd.gradcheck(lambda z: head(queries, z), (logits,))
    # analytic: d/dz log(lam pk + (1-lam) softmax(z))_y
    cot = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    out = head(queries, logits)
    cot = cot.masked_fill(torch.isneginf(out), 0.0)
    (g,) = torch.autograd.grad(out, logits, cot)
    p_lm = torch.softmax(logits.detach(), 1)
    p = out.detach().exp()
    r = torch.where(p > 0, (1 - lam) * p_lm / p, torch.zeros_like(p))  # d out_y / d log p_lm_y
    u = cot * r
    expected = u - p_lm * u.sum(1, keepdim=True)
    torch.testing.assert_close(g, expected)


def test_no_nan_where_everything_is_minus_inf():
    # the LM gives -inf to token 2 and no neighbour carries it: output -inf, gradient 0
    keys = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    head = KNNLM(keys, torch.tensor([0, 1]), 3, k=2, lambda_=0.4)
    lm = torch.tensor([[0.0, 1.0, -float("inf")]], dtype=torch.float64)
    for lam in (0.4, 1.0):
        head.lambda_ = lam
        for name in ("lm_logits", "lm_log_probs"):
            x = lm if name == "lm_logits" else torch.log_softmax(lm, 1)
            g = grad_lm(
                head, torch.zeros(1, 1, dtype=torch.float64), x, torch.ones(1, 3), name=name
            )
            out = head(torch.zeros(1, 1, dtype=torch.float64), **{name: x})
            assert torch.isneginf(out[0, 2]) and torch.isfinite(out[0, :2]).all()
            assert torch.isfinite(g).all()
            if lam == 1.0:
                assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_inputs_computed_in_float32(dtype):
    keys, values = store(m=200, d=8, dtype=torch.float32)
    queries = torch.randn(5, 8, generator=gen)
    logits = torch.randn(5, 13, generator=gen)
    head_half = KNNLM(keys.to(dtype), values, 13, k=10)
    q = queries.to(dtype)
    dist, idx = head_half.knn(q)
    assert dist.dtype == torch.float32
    rd, ri = ref_knn(keys.to(dtype), q, 10, "l2")  # the truth for the rounded inputs
    np.testing.assert_array_equal(idx.numpy(), ri)
    np.testing.assert_allclose(dist.numpy(), rd, rtol=1e-5, atol=1e-5)
    lp = head_half.knn_log_probs(q)
    assert lp.dtype == dtype
    expected = ref_knn_probs(rd, ri, values.numpy(), 13, 1.0)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(lp.float().exp().numpy(), expected, atol=1e-2)
    out = head_half(q, logits.to(dtype))
    assert out.dtype == dtype
    mix = ref_mix(expected, logits.to(dtype), 0.25)
    np.testing.assert_allclose(out.float().exp().numpy(), mix, atol=1e-2)


# ---------------------------------------------------------------- datastore
def test_add_grows_the_datastore():
    keys, values = store(m=100)
    head = KNNLM(keys[:60], values[:60], 13, k=7, chunk_size=16)
    head.add(keys[60:], values[60:])
    full = KNNLM(keys, values, 13, k=7)
    queries = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    assert head.size == 100
    for a, b in zip(head.knn(queries), full.knn(queries)):
        assert torch.equal(a, b)
    empty = KNNLM(keys[:0], values[:0], 13, k=2)
    empty.add(keys[:3], values[:3])
    assert empty.knn(queries)[1].shape == (4, 2)


def test_save_load_round_trip(tmp_path):
    keys, values = store(dtype=torch.float16)
    head = KNNLM(keys, values, 13, k=5, temperature=3.0, lambda_=0.6, metric="ip")
    path = tmp_path / "dstore.pt"
    head.save(path)
    back = KNNLM.load(path, chunk_size=10)
    assert torch.equal(back.keys, head.keys) and back.keys.dtype == torch.float16
    assert torch.equal(back.values, head.values)
    assert (back.k, back.temperature, back.lambda_, back.metric, back.chunk_size) == (
        5,
        3.0,
        0.6,
        "ip",
        10,
    )
    q = torch.randn(3, 8, generator=gen)
    torch.testing.assert_close(back(q, torch.zeros(3, 13)), head(q, torch.zeros(3, 13)))
    assert KNNLM.load(path, k=2).k == 2


def test_load_errors(tmp_path):
    keys, values = store()
    good = {
        "format": "softmaxkit.heads.KNNLM",
        "version": 1,
        "keys": keys,
        "values": values,
        "vocab_size": 13,
        "k": 3,
        "temperature": 1.0,
        "lambda_": 0.25,
        "metric": "l2",
    }
    path = tmp_path / "x.pt"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="could not read a KNNLM datastore"):
        KNNLM.load(path)
    with pytest.raises(FileNotFoundError):
        KNNLM.load(tmp_path / "missing.pt")
    cases = [
        ({"format": "other"}, "is not a KNNLM datastore"),
        ({"version": 2}, "datastore version 2"),
        ({"keys": keys[0]}, r"keys must have shape \(M, d\)"),
        ({"keys": torch.zeros(300, 8, dtype=torch.long)}, "keys must be a floating-point"),
        ({"values": values[:5]}, r"values must have shape \(300,\)"),
        ({"values": values.int()}, "values must be a torch.long"),
        ({"vocab_size": 5}, r"token ids in \[0, 4\]"),
    ]
    for change, message in cases:
        torch.save({**good, **change}, path)
        with pytest.raises(ValueError, match=message):
            KNNLM.load(path)
    bad = dict(good)
    del bad["values"]
    torch.save(bad, path)
    with pytest.raises(ValueError, match="missing the entries"):
        KNNLM.load(path)


# ---------------------------------------------------------------- faiss (optional)
def test_faiss_index_matches_torch_search():
    pytest.importorskip("faiss")
    keys, values = store(m=400, d=8, dtype=torch.float32)
    queries = torch.randn(6, 8, generator=gen)
    for metric in ("l2", "ip"):
        exact = KNNLM(keys, values, 13, k=9, metric=metric)
        fast = KNNLM(keys[:300], values[:300], 13, k=9, metric=metric, index="faiss")
        fast.add(keys[300:], values[300:])
        for a, b in zip(fast.knn(queries), exact.knn(queries)):
            assert torch.equal(a, b)


def test_faiss_missing_gives_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    keys, values = store()
    with pytest.raises(ImportError, match="index='faiss' needs the optional package faiss"):
        KNNLM(keys, values, 13, index="faiss")


# ---------------------------------------------------------------- errors
def test_errors():
    keys, values = store()
    q = torch.randn(2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="k must be at most the datastore size 300, got k=1024"):
        KNNLM(keys, values, 13).knn(q)
    with pytest.raises(ValueError, match=r"queries must have shape \(\.\.\., 8\)"):
        KNNLM(keys, values, 13, k=2).knn(torch.randn(2, 7))
    with pytest.raises(TypeError, match="queries must be a floating-point"):
        KNNLM(keys, values, 13, k=2).knn(torch.ones(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"keys must have shape \(M, d\)"):
        KNNLM(keys[0], values, 13)
    with pytest.raises(ValueError, match=r"values must have shape \(300,\)"):
        KNNLM(keys, values[:3], 13)
    with pytest.raises(TypeError, match="values must be a torch.long"):
        KNNLM(keys, values.float(), 13)
    with pytest.raises(ValueError, match=r"values must hold token ids in \[0, 9\], got 1[0-2]"):
        KNNLM(keys, values, 10)
    with pytest.raises(ValueError, match=r"values must hold token ids in \[0, 12\], got -1"):
        KNNLM(keys, values.clamp(max=-1), 13)
    with pytest.raises(ValueError, match=r"lambda_ must be in \[0, 1\], got 1.5"):
        KNNLM(keys, values, 13, lambda_=1.5)
    with pytest.raises(ValueError, match=r"temperature must be in \(0, inf\], got 0"):
        KNNLM(keys, values, 13, temperature=0.0)
    with pytest.raises(ValueError, match="metric must be one of 'l2', 'ip'"):
        KNNLM(keys, values, 13, metric="cos")
    with pytest.raises(ValueError, match="index must be one of 'torch', 'faiss'"):
        KNNLM(keys, values, 13, index="annoy")
    with pytest.raises(ValueError, match=r"k must be in \[1, inf\], got 0"):
        KNNLM(keys, values, 13, k=0)
    head = KNNLM(keys, values, 13, k=2)
    with pytest.raises(ValueError, match=r"lm_logits must have shape \(2, 13\)"):
        head(q, torch.zeros(2, 12))
    with pytest.raises(ValueError, match="exactly one of lm_logits and lm_log_probs"):
        head(q)
    with pytest.raises(ValueError, match="exactly one of lm_logits and lm_log_probs"):
        head(q, torch.zeros(2, 13), lm_log_probs=torch.zeros(2, 13))
    with pytest.raises(ValueError, match=r"keys must have 8 columns"):
        head.add(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"values must hold token ids in \[0, 12\], got 13"):
        head.add(torch.zeros(1, 8), torch.tensor([13]))


def test_runs_under_torch_compile():
    keys, values = store(m=50, d=4, vocab=7, dtype=torch.float32)
    head = KNNLM(keys, values, 7, k=5, chunk_size=16)
    q = torch.randn(3, 4, generator=gen)
    z = torch.randn(3, 7, generator=gen, requires_grad=True)
    out = torch.compile(head)(q, z)
    torch.testing.assert_close(out, head(q, z))
    (g,) = torch.autograd.grad(out.sum(), z)
    torch.testing.assert_close(g, torch.autograd.grad(head(q, z).sum(), z)[0])
