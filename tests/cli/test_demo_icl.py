"""``softmaxkit demo icl`` in miniature: table, JSON, PNG, reproducibility, predictors, errors."""

from __future__ import annotations

import argparse
import io
import json
import math

import pytest
import torch

from softmaxkit.cli import demo_icl

TINY = [
    "--d", "3", "--length", "8", "--heads", "2", "--steps", "40", "--batch", "64",
    "--eval-prompts", "300", "--length-factors", "1,2", "--log-every", "20", "--seed", "3",
]  # fmt: skip
PREDICTORS = {
    "multi_head",
    "single_head",
    "linear",
    "linear_rescaled",
    "debiased_gd",
    "debiased_gd_model",
    "ridge",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softmaxkit demo icl")
    demo_icl.add_arguments(parser)
    return parser


def _run(tmp_path, name, extra=()):
    out_dir = tmp_path / name
    args = _parser().parse_args([*TINY, "--out", str(out_dir), *extra])
    out, err = io.StringIO(), io.StringIO()
    assert demo_icl.run(args, out, err) == 0
    return json.loads((out_dir / "results.json").read_text()), out.getvalue(), out_dir


def _without_times(result):
    result = json.loads(json.dumps(result))
    for r in result["runs"].values():
        del r["seconds"]
    return result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("icl"), "a")


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, tiny):
    again, _, _ = _run(tmp_path, "b")
    assert _without_times(again) == _without_times(tiny[0])
    other, _, _ = _run(tmp_path, "c", ["--seed", "4"])
    assert other["error_at_train_length"] != tiny[0]["error_at_train_length"]


def test_tiny_run_prints_tables_writes_json_and_png(tiny):
    first, printed, out_dir = tiny

    assert first["setting"] == {
        "d": 3,
        "length": 8,
        "heads": 2,
        "noise_variance": 0.1,
        "beta_prior": "N(0, I/d)",
        "x": "N(0, I)",
        "seed": 3,
        "eval_prompts": 300,
        "error": "mean (y_hat - beta^T x_q)^2 on fresh prompts",
    }
    assert list(first["runs"]) == ["multi_head", "single_head", "linear"]
    for name, r in first["runs"].items():
        assert r["curves"]["step"] == [20, 40]
        assert all(math.isfinite(v) and v > 0 for v in r["curves"]["loss"])
        assert r["config"]["steps"] == 40 and r["config"]["batch"] == 64
        assert r["config"]["heads"] == (1 if name == "single_head" else 2)
        assert r["final_loss"] == r["curves"]["loss"][-1]
        assert f"{name:<11} step     40" in printed
    assert first["runs"]["linear"]["config"]["attention"] == "linear"

    assert set(first["error_at_train_length"]) == PREDICTORS
    assert all(v >= 0 and math.isfinite(v) for v in first["error_at_train_length"].values())
    gen = first["length_generalisation"]
    assert gen["lengths"] == [8, 16]
    assert set(gen["error"]) == PREDICTORS and all(len(v) == 2 for v in gen["error"].values())
    for key, values in gen["error"].items():  # the first length is the training length
        assert values[0] == first["error_at_train_length"][key]
    # the trained-length linear weights and the rescaled ones agree at the training length
    assert gen["error"]["linear"][0] == pytest.approx(gen["error"]["linear_rescaled"][0])
    # the Bayes-optimal predictor beats every other (up to the sampling error of 300 prompts)
    ridge = first["error_at_train_length"]["ridge"]
    assert all(v >= 0.9 * ridge for v in first["error_at_train_length"].values())

    eta = first["eta"]
    assert eta["approx_loss"] == pytest.approx(8 / (8 + 1.1 * 3))
    assert 0.2 < eta["fitted"] < 1.5
    p = first["patterns"]["multi_head"]
    assert len(p["omega"]) == len(p["mu"]) == 2 and 1 <= p["active_heads"] <= 2
    assert p["eta_model"] == pytest.approx(sum(o * m for o, m in zip(p["omega"], p["mu"])))
    for key in ("kq_y_row_share", "ov_last_entry_share", "ov_sum_ratio"):
        assert 0.0 <= p[key] <= 1.0
    assert len(first["patterns"]["single_head"]["mu"]) == 1

    for text in ("Bayes-optimal ridge", "debiased GD, fitted eta=", "Length generalisation"):
        assert text in printed
    assert "L=8" in printed and "L=16" in printed and "Results:" in printed
    if (out_dir / "patterns.png").exists():
        for png in ("patterns.png", "length.png"):
            assert (out_dir / png).read_bytes()[:4] == b"\x89PNG"
            assert str(out_dir / png) in printed
    else:
        assert "matplotlib is not installed" in printed
    assert not [f for f in out_dir.iterdir() if f.name.startswith(".results-")]


def _prompts(seed=0, length=12, d=4, batch=5):
    s = demo_icl._Setting(d, length, 0.1)
    return s, demo_icl._sample(s, batch, length, torch.Generator().manual_seed(seed))


def test_prompts_follow_the_paper_layout():
    s, p = _prompts(batch=7)
    assert p.z.shape == (7, 12, 5) and p.zq.shape == (7, 5)
    assert torch.equal(p.zq[:, -1], torch.zeros(7))
    assert p.target.shape == p.yq.shape == (7,)
    # beta is recoverable exactly from d noiseless equations: check y is linear in x plus noise
    big = demo_icl._sample(s, 20000, 1, torch.Generator().manual_seed(1))
    assert big.target.var().item() == pytest.approx(1.0, rel=0.05)  # E|beta|^2 = 1
    assert (big.yq - big.target).var().item() == pytest.approx(0.1, rel=0.05)


def test_debiased_gd_and_ridge_match_their_formulas_in_float64():
    s, p = _prompts()
    z, zq = p.z.double(), p.zq.double()
    x, y, xq = z[..., :-1], z[..., -1], zq[..., :-1]
    for b in range(z.shape[0]):
        xb, yb = x[b], y[b]
        xbar = xb.mean(0)
        expect = 0.7 / s.length * sum(yb[i] * (xb[i] - xbar) @ xq[b] for i in range(s.length))
        got = demo_icl._debiased_gd(z[b : b + 1], zq[b : b + 1], 0.7)
        torch.testing.assert_close(got, expect.reshape(1))
        # posterior mean under beta ~ N(0, I/d), noise 0.1: (X^T X / s2 + d I)^-1 X^T y / s2
        precision = xb.T @ xb / 0.1 + s.d * torch.eye(s.d, dtype=torch.float64)
        post = torch.linalg.inv(precision) @ (xb.T @ yb) / 0.1
        got = demo_icl._ridge(z[b : b + 1], zq[b : b + 1], 0.1)
        torch.testing.assert_close(got, (post @ xq[b]).reshape(1))


def test_model_is_the_paper_formula_and_ignores_everything_but_ov_last_row():
    s, p = _prompts()
    torch.manual_seed(0)
    model = demo_icl._Attention(s.d, 3, "softmax", s.length).double()
    z, zq = p.z.double(), p.zq.double()
    expect = torch.zeros(z.shape[0], dtype=torch.float64)
    for h in range(3):
        weights = torch.softmax(z @ model.kq[h] @ zq.unsqueeze(-1), dim=1)  # (B, L, 1)
        expect += (model.ov[h] @ (z * weights).sum(1).unsqueeze(-1))[:, -1, 0]
    torch.testing.assert_close(model(z, zq), expect)
    with torch.no_grad():
        model.ov[:, :-1] = 123.0
    torch.testing.assert_close(model(z, zq), expect)
    linear = demo_icl._Attention(s.d, 3, "linear", 6).double()
    scores = torch.einsum("bld,hde,be->bhl", z, linear.kq, zq)
    mixed = torch.einsum("bhl,bld->bhd", scores, z)
    out = torch.einsum("bhd,hd->b", mixed, linear.ov[:, -1])
    torch.testing.assert_close(linear(z, zq), out / 6)
    torch.testing.assert_close(linear(z, zq, rescale=True), out / s.length)


def test_ideal_two_head_pattern_is_debiased_gd_to_first_order():
    """(omega, mu), (-omega, -mu) heads predict (2 omega mu / L) sum y (x - xbar)^T x_q."""
    s, p = _prompts(length=30, batch=50)
    model = demo_icl._Attention(s.d, 2, "softmax", s.length).double()
    omega, mu = 1e-4, 3.0
    with torch.no_grad():
        model.kq.zero_()
        model.ov.zero_()
        model.kq[0, : s.d, : s.d] = omega * torch.eye(s.d)
        model.kq[1, : s.d, : s.d] = -omega * torch.eye(s.d)
        model.ov[0, -1, -1], model.ov[1, -1, -1] = mu, -mu
    z, zq = p.z.double(), p.zq.double()
    got, expect = model(z, zq), demo_icl._debiased_gd(z, zq, 2 * omega * mu)
    torch.testing.assert_close(got, expect, rtol=1e-3, atol=1e-9)
    patterns = demo_icl._patterns(model)
    assert patterns["kq_offdiag_ratio"] == patterns["kq_diag_spread"] == 0.0
    assert patterns["kq_effective_offdiag_ratio"] == patterns["kq_y_row_share"] == 0.0
    assert patterns["ov_last_entry_share"] == 1.0 and patterns["ov_sum_ratio"] == 0.0
    assert patterns["eta_model"] == pytest.approx(2 * omega * mu)
    assert patterns["active_heads"] == 2


def test_fitted_eta_is_the_least_squares_step():
    s = demo_icl._Setting(3, 20, 0.1)
    eta = demo_icl._fit_eta(s, 2000, torch.Generator().manual_seed(0))
    p = demo_icl._sample(s, 2000, 20, torch.Generator().manual_seed(0))
    g = demo_icl._debiased_gd(p.z, p.zq, 1.0).double()
    assert eta == pytest.approx((g @ p.target.double() / (g @ g)).item(), rel=1e-6)


@pytest.mark.parametrize(
    "argv",
    [
        ["--heads", "1"],
        ["--length", "1"],
        ["--d", "0"],
        ["--steps", "0"],
        ["--noise", "0"],
        ["--lr", "-1"],
        ["--length-factors", "0,2"],
        ["--length-factors", ","],
        ["--batch", "x"],
    ],
)
def test_bad_arguments_exit_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_description_and_defaults():
    assert "arXiv:2503.12734" in demo_icl.DESCRIPTION
    args = _parser().parse_args([])
    assert (args.d, args.length, args.heads, args.noise) == (5, 40, 4, 0.1)
    assert args.out == demo_icl.Path("softmaxkit-demo") / "icl" and args.seed == 0
    assert args.length_factors == [1, 2, 4, 8]
