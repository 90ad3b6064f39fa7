"""``softmaxkit report``: numbers against direct calls, file formats, bad input, HTML."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from softmaxkit.cli import report as R
from softmaxkit.cli.main import main
from softmaxkit.cli.report_html import _json_ready

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

N, C, D, N_OOD = 240, 4, 6, 90
METRICS = set(R.METRIC_LABELS)


def make_data(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Logits over-confident by a factor 3 (true logits ``z``, labels drawn from
    softmax(z), reported logits ``3 z``); features = class centre + noise; OOD rows with
    flat logits and shifted features. float64 so every file format stores the same values."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(C, D, generator=g, dtype=torch.float64)
    true = 2 * torch.randn(N, C, generator=g, dtype=torch.float64)
    labels = torch.multinomial(true.softmax(-1), 1, generator=g).squeeze(1)
    features = centres[labels] + torch.randn(N, D, generator=g, dtype=torch.float64)
    ood_logits = 0.7 * torch.randn(N_OOD, C, generator=g, dtype=torch.float64)
    ood_features = 4 + torch.randn(N_OOD, D, generator=g, dtype=torch.float64)
    return {
        "in": {"logits": 3 * true, "labels": labels, "features": features},
        "ood": {"logits": ood_logits, "features": ood_features},
    }


def write(path: Path, arrays: dict[str, object]) -> Path:
    """Write ``arrays`` in the format of ``path``'s extension (.pt, .npz or .csv)."""
    if path.suffix == ".pt":
        torch.save(arrays, path)
    elif path.suffix == ".npz":
        np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    else:
        logits = np.asarray(arrays["logits"])
        columns = {f"logit_{j}": logits[:, j] for j in range(logits.shape[1])}
        if "labels" in arrays:
            columns = {"label": np.asarray(arrays["labels"]), **columns}
        if "features" in arrays:
            feats = np.asarray(arrays["features"])
            columns.update({f"feature_{j}": feats[:, j] for j in range(feats.shape[1])})
        with open(path, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(columns)
            for i in range(len(logits)):
                out.writerow(repr(v.item()) for v in (col[i] for col in columns.values()))
    return path


def run_report(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(["report", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def pt_report(data, tmp_path_factory):
    """The report of the generated .pt files (with OOD data, --n-bins 10, --knn-k 5)."""
    root = tmp_path_factory.mktemp("pt")
    inp, ood = write(root / "in.pt", data["in"]), write(root / "ood.pt", data["ood"])
    assert main(["report", str(inp), "--ood", str(ood), "--out", str(root / "out"),
                 "--n-bins", "10", "--knn-k", "5"]) == 0  # fmt: skip
    text = (root / "out" / "report.json").read_text()
    return json.loads(text, parse_constant=_no_constants), root / "out"


def _no_constants(name: str):
    raise AssertionError(f"report.json is not strict JSON: {name}")


# ------------------------------------------------------------------ numbers


def test_numbers_match_direct_calls(data, pt_report):
    from softmaxkit import calibration as Cal
    from softmaxkit import ood as O
    from softmaxkit.dynamics import softmax_collapse_fraction

    rep, _ = pt_report
    z, y, f = data["in"]["logits"], data["in"]["labels"], data["in"]["features"]
    zo, fo = data["ood"]["logits"], data["ood"]["features"]
    # the documented split: a permutation seeded with --seed (0), first half = fit
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    fit, ev = order[: N // 2].sort().values, order[N // 2 :].sort().values
    assert rep["calibration"]["n_fit"] == len(fit) == 120 and rep["calibration"]["n_eval"] == 120
    assert "seeded with --seed 0" in rep["calibration"]["split"]
    assert rep["input"] == {
        "source": rep["input"]["source"],
        "n": N,
        "num_classes": C,
        "feature_dim": D,
        "ood_source": rep["input"]["ood_source"],
        "n_ood": N_OOD,
    }
    assert rep["settings"] == {"n_bins": 10, "seed": 0}

    def metrics(logits, labels):
        def ece(**kw):
            return Cal.expected_calibration_error(logits, labels, n_bins=10, **kw).item()

        return {
            "accuracy": (logits.argmax(1) == labels).double().mean().item(),
            "nll": Cal.negative_log_likelihood(logits, labels).item(),
            "brier": Cal.brier_score(logits, labels).item(),
            "ece_l1_uniform": ece(),
            "ece_l1_adaptive": ece(binning="adaptive"),
            "ece_l2": ece(norm="l2"),
            "ece_max": ece(norm="max"),
            "classwise_ece": Cal.classwise_calibration_error(logits, labels, n_bins=10).item(),
        }

    def close(got, want, rel=1e-9):
        assert set(got) == set(want)
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-12), key

    close(rep["overall"], metrics(z, y))
    assert rep["softmax_collapse"]["fraction"] == softmax_collapse_fraction(z).item()
    methods = rep["calibration"]["methods"]
    assert list(methods) == ["uncalibrated", "temperature", "vector", "matrix"]
    close(methods["uncalibrated"]["metrics"], metrics(z[ev], y[ev]))

    with R._threads(1):  # as the report runs a small input, so the L-BFGS paths agree
        ts = Cal.TemperatureScaling().fit(z[fit], y[fit])
        vs = Cal.VectorScaling(C).fit(z[fit], y[fit])
        ms = Cal.MatrixScaling(C).fit(z[fit], y[fit])
    t = methods["temperature"]["parameters"]["temperature"]
    assert t == pytest.approx(ts.temperature.item(), rel=1e-6)
    close(methods["temperature"]["metrics"], metrics(z[ev] / t, y[ev]), rel=1e-5)
    for name, module in (("vector", vs), ("matrix", ms)):
        params = methods[name]["parameters"]
        assert set(params) == {"weight", "bias"}
        for key in ("weight", "bias"):
            want = getattr(module, key).detach().double()
            assert np.allclose(params[key], want.numpy(), rtol=1e-4, atol=1e-6), (name, key)
        with torch.no_grad():
            close(methods[name]["metrics"], metrics(module(z[ev]), y[ev]), rel=1e-3)
        assert methods[name]["fit_info"]["nll_after"] <= methods[name]["fit_info"]["nll_before"]
    assert np.asarray(methods["matrix"]["parameters"]["weight"]).shape == (C, C)

    ood = rep["ood"]
    assert ood["n_in"] == len(ev) and ood["n_out"] == N_OOD and ood["knn_k"] == 5
    assert ood["skipped"] == {}
    maha = O.Mahalanobis(covariance="ledoit_wolf").fit(f[fit], y[fit])
    knn = O.KNNScore(k=5).fit(f[fit])
    direct = {
        "msp": (O.msp_score(z[ev]), O.msp_score(zo)),
        "max_logit": (O.max_logit_score(z[ev]), O.max_logit_score(zo)),
        "energy": (O.energy_score(z[ev]), O.energy_score(zo)),
        "mahalanobis": (maha.score(f[ev]), maha.score(fo)),
        "knn": (knn.score(f[ev]), knn.score(fo)),
    }
    assert list(ood["scores"]) == list(direct)
    for name, (s_in, s_out) in direct.items():
        want = {
            "auroc": O.auroc(s_in, s_out).item(),
            "aupr_in": O.aupr_in(s_in, s_out).item(),
            "aupr_out": O.aupr_out(s_in, s_out).item(),
            "fpr_at_95_tpr": O.fpr_at_tpr(s_in, s_out, tpr=0.95).item(),
        }
        close(ood["scores"][name], want, rel=1e-6)


def test_temperature_scaling_fixes_overconfidence(pt_report):
    """Guo et al. 2017 (arXiv:1706.04599), Sec. 5: temperature scaling calibrates an
    over-confident classifier without changing its accuracy. The logits are 3x the true
    ones, so the fitted T is near 3 and every ECE drops."""
    methods = pt_report[0]["calibration"]["methods"]
    before, after = methods["uncalibrated"]["metrics"], methods["temperature"]["metrics"]
    assert 2.0 < methods["temperature"]["parameters"]["temperature"] < 4.5
    assert after["accuracy"] == before["accuracy"]
    assert after["nll"] < before["nll"]
    for key in ("ece_l1_uniform", "ece_l1_adaptive", "ece_l2"):
        assert after[key] < 0.75 * before[key], key


@pytest.mark.parametrize("fmt", [".npz", ".csv"])
def test_every_format_reads_the_same_values(fmt, data, tmp_path):
    """.pt, .npz and .csv (float64 written with repr) load to identical tensors, so the
    report, a deterministic function of them, is the same."""
    for part, ood in (("in", False), ("ood", True)):
        want = R.load_input(write(tmp_path / f"{part}.pt", data[part]), ood=ood)
        got = R.load_input(write(tmp_path / f"{part}{fmt}", data[part]), ood=ood)
        for key in ("logits", "labels", "features"):
            a, b = getattr(got, key), getattr(want, key)
            assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), key
    ood = R.load_input(tmp_path / f"ood{fmt}", ood=True)
    assert ood.labels is None and ood.logits.shape == (N_OOD, C)


def test_csv_without_features_and_npz_without_ood(data, tmp_path, capsys):
    small = {"logits": data["in"]["logits"][:80], "labels": data["in"]["labels"][:80]}
    inp = write(tmp_path / "in.csv", small)
    ood = write(tmp_path / "ood.csv", {"logits": data["ood"]["logits"][:30]})
    rc, out, err = run_report([str(inp), "--ood", str(ood), "--out", str(tmp_path / "a")], capsys)
    assert rc == 0 and err == ""
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["input"]["feature_dim"] is None and rep["input"]["n"] == 80
    assert list(rep["ood"]["scores"]) == ["msp", "max_logit", "energy"]
    assert set(rep["ood"]["skipped"]) == {"mahalanobis", "knn"}
    assert "AUROC" in out and "Report:" in out
    assert (
        "Mahalanobis (tied covariance, Ledoit-Wolf): skipped"
        in (tmp_path / "a" / "report.html").read_text()
    )

    argv = [str(write(tmp_path / "in.npz", small)), "--out", str(tmp_path / "b")]
    rc, out, err = run_report([*argv, "--seed", "5", "--n-bins", "4"], capsys)
    assert rc == 0
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["ood"] is None and rep["settings"] == {"n_bins": 4, "seed": 5}
    assert "seeded with --seed 5" in rep["calibration"]["split"]
    page = (tmp_path / "b" / "report.html").read_text()
    assert "No OOD data" in page and len(_images(page)) == 4


def test_labels_in_the_ood_file_are_optional_and_unused(data, tmp_path):
    """OOD labels may name classes the model does not have (here C + 1)."""
    ood = dict(data["ood"], labels=torch.full((N_OOD,), C + 1))
    inp = R.load_input(write(tmp_path / "in.pt", data["in"]))
    loaded = R.load_input(write(tmp_path / "ood.pt", ood), ood=True)
    assert loaded.labels is None
    R.check_ood(inp, loaded)  # no error


def test_a_class_missing_from_the_fit_half_skips_mahalanobis_only():
    g = torch.Generator().manual_seed(1)
    fit, ev = R.split_halves(30, seed=0)
    labels = torch.zeros(30, dtype=torch.int64)
    labels[fit[0]] = 2  # the fit half has classes 0 and 2 but not 1
    data = R.Data(torch.randn(30, 3, generator=g), labels, torch.randn(30, 4, generator=g), "x")
    ood = R.Data(torch.randn(8, 3, generator=g), None, torch.randn(8, 4, generator=g), "y")
    part = R.ood_scores(data, ood, fit, ev)
    assert list(part["scores"]) == ["msp", "max_logit", "energy", "knn"]
    assert "at least once" in part["skipped"]["mahalanobis"]


def test_json_is_strict():
    value = {"a": [math.nan, 1.5, -math.inf], "b": {"c": math.inf, "d": "text", "e": None}}
    assert _json_ready(value) == {
        "a": [None, 1.5, None],
        "b": {"c": None, "d": "text", "e": None},
    }
    json.dumps(_json_ready(value), allow_nan=False)


def test_split_and_default_knn_k():
    fit, ev = R.split_halves(7, seed=3)
    assert len(fit) == 3 and len(ev) == 4
    assert sorted(torch.cat([fit, ev]).tolist()) == list(range(7))
    assert torch.equal(fit, R.split_halves(7, seed=3)[0])
    assert not torch.equal(fit, R.split_halves(7, seed=4)[0])
    assert [R.default_knn_k(n) for n in (10, 1499, 1500, 50_000, 200_000)] == [1, 1, 2, 50, 200]


# ------------------------------------------------------------------ bad input

GOOD = make_data()["in"]


def _bad_cases():
    n = len(GOOD["labels"])
    nan = GOOD["logits"].clone()
    nan[5, 1] = math.nan
    inf = GOOD["logits"].clone()
    inf[7, 0] = -math.inf
    return [
        ("missing-labels.pt", {"logits": GOOD["logits"]}, "has no 'labels'"),
        ("missing-logits.npz", {"labels": GOOD["labels"]}, "has no 'logits'"),
        ("short.pt", dict(GOOD, labels=GOOD["labels"][:-3]), f"has {n - 3} entries but"),
        ("short-feats.npz", dict(GOOD, features=GOOD["features"][:5]), "'features' has 5 rows"),
        ("nan.pt", dict(GOOD, logits=nan), "'logits' contains NaN"),
        ("nan.csv", dict(GOOD, logits=nan), "'logits' contains NaN (1 non-finite value"),
        ("inf.npz", dict(GOOD, logits=inf), "'logits' contains inf"),
        ("range.pt", dict(GOOD, labels=GOOD["labels"] + 1), f"in [0, {C - 1}]"),
        ("negative.csv", dict(GOOD, labels=GOOD["labels"] - 1), "got -1 in row"),
        ("fraction.npz", dict(GOOD, labels=GOOD["labels"] + 0.5), "must be whole numbers"),
        ("flat.pt", dict(GOOD, logits=GOOD["logits"][:, 0]), "must have shape (N, C)"),
        ("one-class.npz", dict(GOOD, logits=GOOD["logits"][:, :1]), "at least 2 classes"),
        ("labels-2d.pt", dict(GOOD, labels=GOOD["labels"][:, None]), "must have shape (N,)"),
        ("text.npz", dict(GOOD, labels=np.array(["a"] * n)), "'labels' must be a numeric"),
    ]


@pytest.mark.parametrize(("name", "arrays", "message"), _bad_cases(), ids=lambda v: str(v)[:20])
def test_bad_content_is_one_error_line(name, arrays, message, tmp_path, capsys):
    path = write(tmp_path / name, arrays)
    _assert_error([str(path), "--out", str(tmp_path / "out")], message, capsys)
    assert not (tmp_path / "out").exists()


def _assert_error(argv, message, capsys, code=2):
    rc, out, err = run_report(argv, capsys)
    assert rc == code
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("softmaxkit report: error: "), err
    assert message in lines[0], err
    assert "Traceback" not in err + out


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("garbage.pt", b"not a torch file", "cannot read input"),
        ("garbage.npz", b"not a zip", "as an .npz archive"),
        ("empty.csv", b"", "is empty"),
        ("columns.csv", b"label,logit_0,logit_1,score\n0,1,2,3\n", "unknown column 'score'"),
        ("gap.csv", b"label,logit_0,logit_2\n0,1,2\n", "numbered logit_0 .. logit_1"),
        ("nologit.csv", b"label,feature_0\n0,1\n", "no logit_0"),
        ("fields.csv", b"label,logit_0,logit_1\n0,1,2\n1,2\n", "line 3: expected 3 fields"),
        ("cell.csv", b"label,logit_0,logit_1\n0,1,abc\n", "column 'logit_1': 'abc' is not"),
        ("dup.csv", b"label,logit_0,logit_0\n0,1,2\n", "appears more than once"),
        ("partial.csv", b"label,logit_0,logit_1\n0,1,2\n,2,1\n", "line 3: the label is missing"),
        ("binary.csv", b"\xff\xfe\x00bad", "cannot read input"),
        ("header.csv", b"label,logit_0,logit_1\n\n", "has a header row but no data rows"),
        ("data.txt", b"logits", "unknown extension '.txt'"),
        ("noext", b"logits", "unknown extension '(none)'"),
    ],
)
def test_unreadable_files_are_one_error_line(name, content, message, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(content)
    _assert_error([str(path), "--out", str(tmp_path / "out")], message, capsys)


def test_pt_files_that_are_not_a_dict_of_arrays(tmp_path, capsys):
    torch.save(torch.zeros(3, 2), tmp_path / "tensor.pt")
    _assert_error([str(tmp_path / "tensor.pt")], "must hold a dict", capsys)
    torch.save({"logits": torch.zeros(4, 2), "labels": Path("x")}, tmp_path / "object.pt")
    _assert_error([str(tmp_path / "object.pt")], "cannot read input", capsys)  # weights_only
    _assert_error([str(tmp_path / "missing.pt")], "no such file", capsys)
    torch.save({"logits": torch.zeros(1, 2), "labels": torch.zeros(1)}, tmp_path / "one.pt")
    _assert_error([str(tmp_path / "one.pt")], "needs at least 2 rows", capsys)


def test_bad_ood_files(data, tmp_path, capsys):
    inp = str(write(tmp_path / "in.pt", data["in"]))
    cases = [
        ({"logits": data["ood"]["logits"][:, :3], "features": data["ood"]["features"]},
         "has 3 classes (columns) but the input has 4"),
        ({"logits": data["ood"]["logits"]}, "has no 'features', but the input has features"),
        ({"logits": data["ood"]["logits"], "features": data["ood"]["features"][:, :2]},
         "'features' has 2 columns but"),
        ({"features": data["ood"]["features"]}, "OOD input"),
    ]  # fmt: skip
    for i, (arrays, message) in enumerate(cases):
        ood = write(tmp_path / f"ood{i}.npz", arrays)
        _assert_error([inp, "--ood", str(ood), "--out", str(tmp_path / "o")], message, capsys)
    _assert_error(["--ood", inp], "--ood needs an INPUT file", capsys)
    assert not (tmp_path / "o").exists()


def test_usage_errors_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--n-bins", "0"])
    assert exc.value.code == 2 and "must be in [1, inf]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for fragment in ("logit_0", "feature_0", ".npz", "weights_only", "built-in task"):
        assert fragment in text


@pytest.mark.parametrize(("module", "argv"), [("matplotlib", ["x.pt"]), ("sklearn", [])])
def test_missing_optional_dependency(module, argv, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    _assert_error([*argv, "--out", str(tmp_path)], "pip install 'softmaxkit[report]'", capsys, 1)


# ------------------------------------------------------------------ built-in task and HTML


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    out = tmp_path_factory.mktemp("builtin") / "report"
    assert main(["report", "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text()), out


def test_builtin_task(builtin):
    rep, _ = builtin
    b = rep["builtin"]
    assert b["in_distribution_classes"] == list(range(8)) and b["ood_classes"] == [8, 9]
    # digits: 1797 images, 174 of class 8 and 180 of class 9
    assert b["n_train"] + b["n_test"] == 1797 - 354 and b["n_ood"] == 354
    assert rep["input"]["n"] == b["n_test"] and rep["input"]["n_ood"] == 354
    assert rep["input"]["num_classes"] == 8 and rep["input"]["feature_dim"] == 128
    assert b["train_accuracy"] > 0.99 and rep["overall"]["accuracy"] > 0.93
    assert set(rep["ood"]["scores"]) == {"msp", "max_logit", "energy", "mahalanobis", "knn"}
    for name in ("msp", "max_logit", "energy", "knn"):
        assert rep["ood"]["scores"][name]["auroc"] > 0.85, name
    # the hidden layer has dead units: the empirical covariance is singular (AUROC 0.715),
    # the Ledoit-Wolf estimate is not (0.808)
    assert rep["ood"]["scores"]["mahalanobis"]["auroc"] > 0.78
    assert rep["ood"]["warnings"] == {}
    methods = rep["calibration"]["methods"]
    for method in methods.values():
        assert set(method["metrics"]) == METRICS
    # the small-train-set MLP is over-confident (T > 1) and temperature scaling fixes most
    # of its top-label ECE (Guo et al. 2017, Table 1: ECE drops several-fold)
    assert methods["temperature"]["parameters"]["temperature"] > 1.2
    before = methods["uncalibrated"]["metrics"]["ece_l1_uniform"]
    assert methods["temperature"]["metrics"]["ece_l1_uniform"] < 0.6 * before
    assert 0 <= rep["softmax_collapse"]["fraction"] <= 1


def test_builtin_task_is_deterministic():
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    a, a_ood, _ = R.builtin_task(0)
    b, b_ood, _ = R.builtin_task(0)
    assert torch.get_num_threads() == threads  # restored after the one-thread training
    assert torch.equal(torch.random.get_rng_state(), rng)  # global RNG untouched
    for x, y in ((a.logits, b.logits), (a.features, b.features), (a_ood.logits, b_ood.logits)):
        assert torch.equal(x, y)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _images(page: str) -> list[bytes]:
    parser = _Tags()
    parser.feed(page)
    images = []
    for tag, attrs in parser.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed", "base"), tag
        for key in ("src", "href", "srcset", "poster", "data"):
            value = attrs.get(key)
            assert value is None or value.startswith("data:image/png;base64,"), (tag, key)
        if tag == "img":
            images.append(base64.b64decode(attrs["src"].split(",", 1)[1], validate=True))
    assert "url(" not in page and "@import" not in page and "http://" not in page
    return images


def test_html_is_self_contained_with_decodable_plots(builtin):
    import matplotlib.image

    page = (builtin[1] / "report.html").read_text()
    images = _images(page)
    assert len(images) == 5  # 2 reliability diagrams, 2 confidence histograms, OOD scores
    for png in images:
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels[..., :3].std() > 0.05  # not a blank canvas
    for text in ("temperature scaling", "matrix scaling", "Softmax Collapse", "AUROC",
                 "FPR@95%TPR", "Mahalanobis", "held out"):  # fmt: skip
        assert text in page, text


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chromium-headless-shell"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var rows = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    rows.push(im.complete + ":" + im.naturalWidth + "x" + im.naturalHeight + ":" + im.width);
  }
  var pre = document.createElement("pre");
  pre.id = "sk-check";
  pre.textContent = rows.join(",");
  document.body.appendChild(pre);
});
</script>"""


def test_html_renders_its_plots_in_headless_chromium(builtin, tmp_path):
    """The page as a browser shows it: every <img> decoded (naturalWidth > 0) and laid
    out with a non-zero width. A copy of the page gets a small script that writes what it
    sees into the DOM, which --dump-dom prints. Skipped without Chromium, except where
    SOFTMAXKIT_REQUIRE_BROWSER=1 (set by .ci/run): there a missing browser fails."""
    if _chromium() is None:
        if os.environ.get("SOFTMAXKIT_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is not installed and SOFTMAXKIT_REQUIRE_BROWSER=1")
        pytest.skip("Chromium is not installed")
    page = (builtin[1] / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    result = subprocess.run(
        [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
         "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    match = re.search(r'<pre id="sk-check">([^<]*)</pre>', result.stdout)
    assert match, result.stderr[-2000:]
    rows = match.group(1).split(",")
    assert len(rows) == 5
    for row in rows:
        complete, size, shown = row.split(":")
        width, height = (int(v) for v in size.split("x"))
        assert complete == "true" and width > 100 and height > 100 and int(shown) > 0, row


def test_demo_ends_with_the_builtin_report(builtin, tmp_path, capsys):
    argv = ["demo", "--p", "7", "--epochs", "2", "--runs", "perpgrad", "--out", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "curves.json").exists()
    assert f"Report: {tmp_path / 'report' / 'report.html'}" in printed
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    assert rep == builtin[0]  # the same deterministic report as `softmaxkit report`


def test_demo_skips_the_report_without_its_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    argv = ["demo", "--p", "7", "--epochs", "1", "--runs", "perpgrad", "--out", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Report: skipped" in captured.out and "scikit-learn" in captured.err
    assert (tmp_path / "curves.json").exists() and not (tmp_path / "report").exists()


def test_demo_without_the_report(tmp_path, capsys):
    argv = ["demo", "--p", "7", "--epochs", "1", "--runs", "perpgrad", "--out", str(tmp_path)]
    assert main([*argv, "--no-report"]) == 0
    assert "Report" not in capsys.readouterr().out
    assert (tmp_path / "curves.json").exists() and not (tmp_path / "report").exists()


# ------------------------------------------------------- atomic writes, escaping errors


@pytest.fixture
def small_files(data, tmp_path):
    inp, ood = write(tmp_path / "in.pt", data["in"]), write(tmp_path / "ood.pt", data["ood"])
    return [str(inp), "--ood", str(ood), "--knn-k", "5"], tmp_path / "out"


def _previous_pair(out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text('{"old": true}\n')
    (out / "report.html").write_text("<p>old</p>\n")
    return {name: (out / name).read_text() for name in ("report.json", "report.html")}


def _files(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(out.iterdir()) if p.is_file()}


def test_a_failing_html_write_leaves_the_previous_pair(small_files, monkeypatch, capsys):
    from softmaxkit.cli import report_html

    argv, out = small_files
    before = _previous_pair(out)
    real = report_html._write_temporary

    def full_disk(final, text):
        if final.name == "report.html":
            raise OSError(28, "No space left on device")
        return real(final, text)

    monkeypatch.setattr(report_html, "_write_temporary", full_disk)
    _assert_error([*argv, "--out", str(out)], "No space left on device", capsys)
    assert _files(out) == before  # the old pair, and no temporary file
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_a_failing_second_rename_restores_the_first(small_files, monkeypatch, capsys):
    from softmaxkit.cli import report_html

    argv, out = small_files
    before = _previous_pair(out)
    real = os.replace

    def refuse_html(src, dst):
        if Path(dst).name == "report.html" and str(src).endswith(".tmp"):
            raise PermissionError(13, "Permission denied")  # the rename, not the restore
        return real(src, dst)

    monkeypatch.setattr(report_html.os, "replace", refuse_html)
    _assert_error([*argv, "--out", str(out)], "Permission denied", capsys)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]
    assert _files(out) == before


def test_a_failing_write_into_a_new_folder_leaves_nothing(small_files, monkeypatch, capsys):
    from softmaxkit.cli import report_html

    argv, out = small_files
    real = report_html._write_temporary

    def full_disk(final, text):
        if final.name == "report.html":
            raise OSError(28, "No space left on device")
        return real(final, text)

    monkeypatch.setattr(report_html, "_write_temporary", full_disk)
    _assert_error([*argv, "--out", str(out)], "No space left on device", capsys)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("in_the_way", ["report.html", "report.json"])
def test_a_directory_in_the_way(small_files, in_the_way, capsys):
    argv, out = small_files
    before = _previous_pair(out)
    (out / in_the_way).unlink()
    (out / in_the_way).mkdir()
    _assert_error([*argv, "--out", str(out)], "is in the way", capsys)
    del before[in_the_way]
    assert _files(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_success_replaces_the_pair(small_files, capsys):
    argv, out = small_files
    _previous_pair(out)
    assert run_report([*argv, "--out", str(out)], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]
    assert "old" not in (out / "report.json").read_text()
    assert "<p>old</p>" not in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (RuntimeError("fit diverged: L-BFGS produced non-finite parameters"), "fit diverged"),
        (torch.linalg.LinAlgError("linalg.eigh: failed to converge"), "failed to converge"),
        (ValueError("nll must be finite, got nan"), "must be finite"),
        (ZeroDivisionError("float division by zero"), "division by zero"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_errors_escaping_the_analysis_are_one_line(
    small_files, error, message, monkeypatch, capsys
):
    from softmaxkit.cli import report_analysis

    def fail(*args, **kwargs):
        raise error

    argv, out = small_files
    before = _previous_pair(out)
    monkeypatch.setattr(report_analysis, "fit_scalers", fail)
    _assert_error([*argv, "--out", str(out)], message, capsys)
    assert _files(out) == before


def test_a_nan_reaching_json_is_one_line(small_files, monkeypatch, capsys):
    from softmaxkit.cli import report_analysis

    real = report_analysis.calibration_metrics

    def nan_metric(*args, **kwargs):
        return {**real(*args, **kwargs), "nll": np.float32("nan")}  # not a Python float

    argv, out = small_files
    before = _previous_pair(out)
    monkeypatch.setattr(report_analysis, "calibration_metrics", nan_metric)
    _assert_error([*argv, "--out", str(out)], "cannot write report.json", capsys)
    assert _files(out) == before


def test_a_degenerate_feature_fit_is_skipped_with_its_reason():
    """One sample per class in the fit half: Mahalanobis's covariance is zero (every score
    would be the same), so it is skipped, saying why; the other scores are computed."""
    g = torch.Generator().manual_seed(2)
    fit, ev = R.split_halves(8, seed=0)
    labels = torch.zeros(8, dtype=torch.int64)
    labels[fit] = torch.arange(4)
    data = R.Data(torch.randn(8, 4, generator=g), labels, torch.randn(8, 3, generator=g), "x")
    ood = R.Data(torch.randn(5, 4, generator=g), None, torch.randn(5, 3, generator=g), "y")
    part = R.ood_scores(data, ood, fit, ev, knn_k=1)
    assert "covariance of the features is zero" in part["skipped"]["mahalanobis"]
    assert list(part["scores"]) == ["msp", "max_logit", "energy", "knn"]


def test_score_warnings_go_to_the_report_not_the_terminal(monkeypatch):
    """A feature score that warns (the paper's empirical covariance of features with a dead
    unit is singular) is still reported; its warning is kept in the JSON, not printed."""
    import warnings

    from softmaxkit import ood as O
    from softmaxkit.cli import report_scores as S

    empirical = S.OODScore(
        "Mahalanobis (empirical)",
        True,
        S._of_features(lambda s: O.Mahalanobis().fit(s.features_fit, s.labels_fit)),
    )
    monkeypatch.setitem(S.OOD_SCORES, "mahalanobis", empirical)
    monkeypatch.setitem(S.SCORE_LABELS, "mahalanobis", empirical.label)
    g = torch.Generator().manual_seed(3)
    features = torch.randn(60, 4, generator=g)
    features[:, 3] = 0.0  # a dead unit
    data = R.Data(torch.randn(60, 3, generator=g), torch.arange(60) % 3, features, "x")
    ood = R.Data(torch.randn(9, 3, generator=g), None, torch.randn(9, 4, generator=g), "y")
    fit, ev = R.split_halves(60, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        part = R.ood_scores(data, ood, fit, ev, knn_k=3)
    assert "mahalanobis" in part["scores"]
    (message,) = part["warnings"]["mahalanobis"]
    assert "singular (rank 3 of 4" in message
