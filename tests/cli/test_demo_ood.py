"""``softmaxkit demo ood`` at miniature size: the table, the JSON, the PNG, reproducibility
and bad arguments."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from softmaxkit.cli import demo_ood

TINY = ["--epochs", "3", "--hidden", "16", "--feat-dim", "8", "--seed", "2"]
SCORE_KEYS = {"auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr"}


def parse(argv):
    parser = argparse.ArgumentParser(prog=demo_ood.PROG)
    demo_ood.add_arguments(parser)
    return parser.parse_args(argv)


def run(tmp_path, name, extra=()):
    out, err = io.StringIO(), io.StringIO()
    rc = demo_ood.run(parse([*TINY, "--out", str(tmp_path / name), *extra]), out, err)
    assert rc == 0, err.getvalue()
    return json.loads((tmp_path / name / "results.json").read_text()), out.getvalue()


def without_times(results):
    for arm in results["arms"].values():
        arm.pop("seconds")
    return results


def test_miniature_run(tmp_path):
    pytest.importorskip("sklearn")
    results, printed = run(tmp_path, "a")
    assert set(results) == {"paper", "task", "settings", "arms", "claim"}
    assert "arXiv:2402.02653" in results["paper"]
    task = results["task"]
    assert task["ood_classes"] == [8, 9] and task["in_distribution_classes"] == list(range(8))
    assert task["n_train"] == int(0.15 * (task["n_train"] + task["n_test"]))
    ce, palm = results["arms"]["ce"], results["arms"]["palm"]
    assert 0 <= ce["id_accuracy"] <= 1 and palm["id_accuracy"] is None
    assert 0 <= palm["prototype_accuracy"] <= 1
    assert set(palm["final_parts"]) == {"mle", "proto_contra"}
    assert set(ce["ood"]["scores"]) == {
        "msp",
        "max_logit",
        "energy",
        "mahalanobis",
        "knn",
        "ssd_plus",
    }
    assert set(palm["ood"]["scores"]) == {"mahalanobis", "knn", "ssd_plus", "prototype"}
    for arm in (ce, palm):
        assert arm["ood"]["n_in"] + arm["ood"]["n_fit"] == task["n_test"]
        assert arm["ood"]["n_out"] == task["n_ood"]
        for metrics in arm["ood"]["scores"].values():
            assert set(metrics) == SCORE_KEYS
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
    claim = results["claim"]
    assert claim["best_ce_score"] in ce["ood"]["scores"]
    assert claim["holds"] == (claim["palm_ssd_plus_auroc"] > claim["best_ce_auroc"])
    for label in ("MSP", "kNN", "SSD+", "prototype mixture", "ID accuracy", "Paper's claim"):
        assert label in printed
    assert "PALM has no classifier" in printed
    png = tmp_path / "a" / "auroc.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "Plot:    skipped" in printed
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "a").glob(".results-*"))  # no temporary file left
    again, _ = run(tmp_path, "b")
    assert without_times(again) == without_times(results)  # seeded


@pytest.mark.parametrize(
    "argv",
    [
        ["--epochs", "0"],
        ["--epochs", "x"],
        ["--train-fraction", "1.5"],
        ["--train-fraction", "0"],
        ["--hidden", "-3"],
        ["--feat-dim", "0"],
    ],
)
def test_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_too_small_train_set(tmp_path):
    pytest.importorskip("sklearn")
    out, err = io.StringIO(), io.StringIO()
    args = parse([*TINY, "--train-fraction", "0.002", "--out", str(tmp_path / "c")])
    assert demo_ood.run(args, out, err) == 2
    assert "--train-fraction" in err.getvalue()
    assert not (tmp_path / "c").exists()


def test_interface():
    assert isinstance(demo_ood.DESCRIPTION, str) and "\n" not in demo_ood.DESCRIPTION
    args = parse([])
    assert args.out.parts == ("softmaxkit-demo", "ood") and args.seed == 0
    assert args.epochs == demo_ood.DEFAULT_EPOCHS
