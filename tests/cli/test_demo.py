"""``softmaxkit demo`` on a tiny problem: output files, structure, reproducibility."""

from __future__ import annotations

import json

import pytest
import torch

from softmaxkit.cli import demo
from softmaxkit.cli.main import main

TINY = ["demo", "--p", "23", "--epochs", "12", "--log-every", "4", "--seed", "3"]
CURVE_KEYS = {
    "epoch",
    "train_loss",
    "train_acc",
    "test_acc",
    "collapse",
    "zero_loss",
    "weight_norm",
}


def _run(tmp_path, name, extra=()):
    out = tmp_path / name
    assert main([*TINY, "--out", str(out), *extra]) == 0
    return json.loads((out / "curves.json").read_text()), out


def test_tiny_run_writes_curves_and_is_reproducible(tmp_path, capsys):
    first, out = _run(tmp_path, "a")
    printed = capsys.readouterr().out
    second, _ = _run(tmp_path, "b")

    assert first["task"]["p"] == 23 and first["task"]["n_train"] == int(0.4 * 23 * 23)
    assert first["task"]["n_train"] + first["task"]["n_test"] == 23 * 23
    assert list(first["runs"]) == ["softmax", "perpgrad", "stablemax"]
    for name, r in first["runs"].items():
        c = r["curves"]
        assert set(c) == CURVE_KEYS
        assert c["epoch"] == [0, 4, 8, 12]
        assert all(len(v) == 4 for v in c.values())
        assert all(0.0 <= v <= 1.0 for key in ("train_acc", "test_acc", "collapse") for v in c[key])
        assert r["config"]["epochs"] == 12 and r["config"]["lr"] == 0.01
        assert r["final"]["test_acc"] == c["test_acc"][-1]
        assert r["seconds"] > 0
        assert f"{name:<9} epoch     12" in printed
    assert first["runs"]["perpgrad"]["config"]["optimizer"].startswith("PerpGrad")
    assert first["runs"]["softmax"]["config"]["betas"] == [0.9, 0.99]
    assert "StableMax" in first["runs"]["stablemax"]["config"]["loss"]
    # the runs start from the same initialisation (same loss at epoch 0 for the two CE runs)
    start = {name: r["curves"]["train_loss"][0] for name, r in first["runs"].items()}
    assert start["softmax"] == start["perpgrad"] != start["stablemax"]
    for name in first["runs"]:
        assert first["runs"][name]["curves"] == second["runs"][name]["curves"]
    assert "test>95% at" in printed and "Curves:" in printed
    if (out / "curves.png").exists():
        assert "Plot:" in printed and str(out / "curves.png") in printed
    else:
        assert "matplotlib is not installed" in printed


def test_subset_of_runs_and_seed_changes_the_split(tmp_path):
    one, _ = _run(tmp_path, "one", ["--runs", "perpgrad"])
    other, _ = _run(tmp_path, "two", ["--runs", "perpgrad", "--seed", "4"])
    assert list(one["runs"]) == ["perpgrad"]
    assert one["runs"]["perpgrad"]["curves"] != other["runs"]["perpgrad"]["curves"]


def test_data_is_modular_addition_with_a_seeded_split():
    d = demo.make_data(7, 0.4, seed=0)
    assert d.x_train.shape == (19, 14) and d.x_test.shape == (30, 14)
    x = torch.cat([d.x_train, d.x_test])
    y = torch.cat([d.y_train, d.y_test])
    a, b = x[:, :7].argmax(1), x[:, 7:].argmax(1)
    assert torch.equal(y, (a + b) % 7)
    assert torch.equal(x.sum(1), torch.full((49,), 2.0))
    assert len({(int(i), int(j)) for i, j in zip(a, b)}) == 49  # every pair exactly once
    assert torch.equal(demo.make_data(7, 0.4, seed=0).y_train, d.y_train)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "softmax,adam"], "run must be one of"),
        (["--train-fraction", "1.5"], "must be in (0, 1)"),
        (["--epochs", "0"], "must be in [1, inf]"),
    ],
)
def test_bad_arguments_exit_with_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_empty_split_is_refused(tmp_path, capsys):
    assert main(["demo", "--p", "2", "--train-fraction", "0.1", "--out", str(tmp_path)]) == 2
    assert "empty train or test set" in capsys.readouterr().err


def test_paper_claim_perpgrad_generalises_where_adamw_overfits():
    """Fig. 1 / 6b in miniature (p = 59): ⊥AdamW passes 95% test accuracy within 200
    epochs from the same initialisation where plain AdamW fits the training set and stays
    at chance."""
    import io

    data = demo.make_data(59, 0.4, seed=42)
    sink = io.StringIO()
    perp = demo.train("perpgrad", data, 200, 200, 42, out=sink, err=sink)["curves"]
    plain = demo.train("softmax", data, 200, 200, 42, out=sink, err=sink)["curves"]
    assert perp["test_acc"][-1] > 0.95 and perp["train_acc"][-1] == 1.0
    assert plain["train_acc"][-1] == 1.0 and plain["test_acc"][-1] < 0.05


def test_named_experiment_grokking_is_the_default_demo(tmp_path):
    named = tmp_path / "named"
    assert main(["demo", "grokking", *TINY[1:], "--no-report", "--out", str(named)]) == 0
    plain = tmp_path / "plain"
    assert main([*TINY, "--no-report", "--out", str(plain)]) == 0
    first = json.loads((named / "curves.json").read_text())["runs"]
    second = json.loads((plain / "curves.json").read_text())["runs"]
    assert {k: r["curves"] for k, r in first.items()} == {k: r["curves"] for k, r in second.items()}


def test_demo_help_lists_every_experiment(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    printed = capsys.readouterr().out
    for name in demo.EXPERIMENTS:
        assert f"softmaxkit demo {name}" in printed


def test_lookup_input_layer_equals_the_one_hot_model_and_its_gradients():
    import torch.nn.functional as F

    torch.manual_seed(1)
    model, data = demo.make_model(7), demo.make_data(7, 0.4, seed=0)
    w = [model.first.weight, model.rest[1].weight, model.rest[3].weight]
    one_hot = F.linear(F.relu(F.linear(F.relu(F.linear(data.x_train, w[0])), w[1])), w[2])
    lookup = model(data.pairs("train"))
    assert torch.equal(one_hot, lookup)
    g1 = torch.autograd.grad(one_hot.square().sum(), w)
    g2 = torch.autograd.grad(lookup.square().sum(), w)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
