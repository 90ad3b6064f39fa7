"""Tests of the ``softmaxkit bench`` harness, on a tiny fake cases folder."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

from softmaxkit.cli import bench, bench_cases, bench_memory
from softmaxkit.cli import main as cli_main

MB = 2**20

FAKE_CASES = textwrap.dedent(
    """
    import time

    import torch

    from softmaxkit.cli.bench import Case


    def small(quick):
        g = torch.Generator().manual_seed(0)
        return (torch.randn(8, 16, generator=g).requires_grad_(),)


    def sleepy(seconds):
        def fn(x):
            time.sleep(seconds)
            return x * 2
        return fn


    def alloc_mb(mb):
        def fn(x):
            return torch.ones(mb * 2**18)  # written, so that the pages are touched
        return fn


    CASES = [
        Case("copy/8x16", small, lambda x: x * 2, lambda x: x.mul(2), "x.mul",
             targets={"time_fwd": 1000.0, "time_fwdbwd": 1000.0}, atol=0.0),
        Case("slow/8x16", small, sleepy(0.02), sleepy(0.001), "fast sleep",
             targets={"time_fwd": 1.0}, atol=0.0),
        Case("wrong/8x16", small, lambda x: x * 2 + 1e-3, lambda x: x * 2, "x * 2",
             backward=False, atol=1e-5),
        Case("boom/8x16", small, lambda x: x.boom(), lambda x: x, "x"),
        Case("needs/8x16", small, lambda x: x, lambda x: x, "x",
             requires=("softmaxkit_no_such_module",)),
        Case("alloc/64MB", small, alloc_mb(64), alloc_mb(32), "32 MB",
             backward=False, targets={"mem_fwd": 1.5}),
    ]
    """
)


@pytest.fixture(autouse=True)
def _only_bench(monkeypatch):
    """Parse with the bench subcommand only, so these tests do not depend on the others."""
    monkeypatch.setattr(cli_main, "SUBCOMMANDS", {"bench": cli_main.SUBCOMMANDS["bench"]})


def _write_cases(folder: Path, extra: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cases_fake.py").write_text(FAKE_CASES)
    for name, text in (extra or {}).items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """One timing run (no memory) over the fake cases, plus a broken case file."""
    tmp = tmp_path_factory.mktemp("bench")
    folder = _write_cases(tmp / "benchmarks", {"cases_broken.py": "raise ImportError('nope')\n"})
    out = tmp / "out.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_main, "SUBCOMMANDS", {"bench": cli_main.SUBCOMMANDS["bench"]})
        rc = cli_main.main(
            ["bench", "--cases", str(folder), "--no-memory", "--repeats", "3", "--out", str(out)]
        )
    report = json.loads(out.read_text())
    return rc, report, {c["name"]: c for c in report["cases"]}, out


def test_discovery_from_cwd_and_k_filter(tmp_path, monkeypatch, capsys):
    _write_cases(tmp_path / "benchmarks")
    monkeypatch.chdir(tmp_path)
    assert cli_main.main(["bench", "--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == [
        "copy/8x16",
        "slow/8x16",
        "wrong/8x16",
        "boom/8x16",
        "needs/8x16",
        "alloc/64MB",
    ]

    assert cli_main.main(["bench", "--list", "-k", "SLOW", "-k", "copy"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == ["copy/8x16", "slow/8x16"]

    assert cli_main.main(["bench", "--list", "-k", "needs"]) == 0
    assert "skipped: requires 'softmaxkit_no_such_module'" in capsys.readouterr().out


def test_missing_cases_folder_is_a_clear_error(tmp_path, capsys):
    assert cli_main.main(["bench", "--cases", str(tmp_path / "nowhere")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert cli_main.main(["bench", "--cases", str(tmp_path)]) == 2
    assert "no cases_*.py" in capsys.readouterr().err
    import softmaxkit

    # cwd without benchmarks/, and a package file whose parents[2] has none either
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.setattr(softmaxkit, "__file__", str(tmp_path / "a" / "b" / "__init__.py"))
        with pytest.raises(bench.BenchError, match="no benchmarks folder"):
            bench.find_cases_dir(None)


def test_duplicate_names_are_a_harness_error(tmp_path, capsys):
    folder = _write_cases(tmp_path, {"cases_again.py": FAKE_CASES})
    assert cli_main.main(["bench", "--cases", str(folder), "--list"]) == 2
    assert "duplicate case name 'copy/8x16'" in capsys.readouterr().err


def test_case_validation():
    setup, fn = (lambda quick: ()), (lambda: None)
    with pytest.raises(ValueError, match="unknown target 'time'"):
        bench.Case("a", setup, fn, fn, "b", targets={"time": 1.0})
    with pytest.raises(ValueError, match="needs backward=True"):
        bench.Case("a", setup, fn, fn, "b", backward=False, targets={"mem_fwdbwd": 1.0})
    with pytest.raises(ValueError, match="must be > 0"):
        bench.Case("a", setup, fn, fn, "b", targets={"time_fwd": 0})
    case = bench.Case("a", setup, fn, fn, "b", requires=["torch"])
    assert case.requires == ("torch",) and case.backward and case.atol is None


def test_json_structure(fake_run):
    rc, report, cases, _ = fake_run
    assert rc == 1  # the broken file, the wrong and the raising case make it a failed run
    assert report["schema"] == bench.SCHEMA_VERSION
    assert set(report["machine"]) >= {"torch", "threads", "cpu_model", "platform"}
    assert report["machine"]["torch"] == torch.__version__
    assert report["memory"] is False and report["repeats"] == 3
    assert set(cases) == {"copy/8x16", "slow/8x16", "wrong/8x16", "boom/8x16", "alloc/64MB"}
    assert [s["name"] for s in report["skipped"]] == ["needs/8x16"]
    assert "softmaxkit_no_such_module" in report["skipped"][0]["reason"]
    assert len(report["errors"]) == 1 and "cases_broken.py" in report["errors"][0]["file"]
    assert "ImportError: nope" in report["errors"][0]["error"]

    copy = cases["copy/8x16"]
    for mode in ("fwd", "fwdbwd"):
        timing = copy["time"][mode]
        for impl in ("ours", "baseline"):
            stats = timing[impl]
            assert stats["repeats"] == 3 and len(stats["samples_ms"]) == 3
            assert stats["q1_ms"] <= stats["median_ms"] <= stats["q3_ms"]
            assert stats["iqr_ms"] == pytest.approx(stats["q3_ms"] - stats["q1_ms"])
        assert timing["ratio"] == pytest.approx(
            timing["ours"]["median_ms"] / timing["baseline"]["median_ms"]
        )
    assert copy["memory"] is None
    assert copy["max_abs_diff"] == 0.0 and copy["correct"] is True
    assert copy["verdict"] == "PASS"
    assert copy["verdicts"]["time_fwd"] == {
        "target": 1000.0,
        "ratio": copy["time"]["fwd"]["ratio"],
        "verdict": "PASS",
    }
    assert cases["wrong/8x16"]["time"]["fwdbwd"] is None  # backward=False


def test_ratio_is_ours_over_baseline_and_misses_are_reported(fake_run):
    _, _, cases, _ = fake_run
    slow = cases["slow/8x16"]
    # ours sleeps 20 ms, the baseline 1 ms: whatever the noise, ours / baseline > 1
    assert slow["time"]["fwd"]["ratio"] > 2
    assert slow["time"]["fwd"]["ours"]["median_ms"] >= 20
    assert slow["verdicts"]["time_fwd"]["verdict"] == "MISS"
    assert slow["verdict"] == "MISS" and slow["status"] == "ok"
    # a memory target without memory measurements has no verdict
    assert cases["alloc/64MB"]["verdicts"]["mem_fwd"]["verdict"] == "n/a"


def test_atol_failure_is_detected(fake_run):
    _, _, cases, _ = fake_run
    wrong = cases["wrong/8x16"]
    assert wrong["status"] == "failed" and wrong["correct"] is False
    assert wrong["verdict"] == "FAIL"
    assert wrong["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert "atol" in wrong["notes"][0]


def test_case_that_raises_is_an_error(fake_run):
    _, report, cases, _ = fake_run
    boom = cases["boom/8x16"]
    assert boom["status"] == "error" and boom["verdict"] == "ERROR"
    assert boom["error"].startswith("AttributeError:") and "boom" in boom["traceback"]
    assert boom["time"] is None


def test_table_and_exit_code_zero_on_misses(tmp_path, capsys):
    folder = _write_cases(tmp_path)
    argv = ["bench", "--cases", str(folder), "-k", "slow", "-k", "copy", "--no-memory"]
    rc = cli_main.main([*argv, "--repeats", "2"])
    assert rc == 0  # a missed target is a measurement, not an error
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split()[:2] == ["case", "baseline"]
    assert any(line.startswith("slow/8x16") and "MISS" in line for line in lines)
    assert "MISS  slow/8x16: time_fwd" in captured.out
    assert "2/2" in captured.err  # the progress bar
    results = sorted((folder / "results").glob("*.json"))
    assert [p.name for p in results][-1] == "latest.json"
    assert results[0].name.startswith("bench-")
    assert json.loads(results[0].read_text()) == json.loads(results[-1].read_text())


def test_memory_child(tmp_path):
    folder = _write_cases(tmp_path)
    file = folder / "cases_fake.py"
    rc = cli_main.main(
        ["bench", "--cases", str(folder), "-k", "alloc", "--repeats", "1", "--out",
         str(tmp_path / "mem.json")]
    )  # fmt: skip
    assert rc == 0
    res = json.loads((tmp_path / "mem.json").read_text())["cases"][0]
    mem = res["memory"]["fwd"]
    ours = mem["ours"]["peak_above_inputs_bytes"]
    half = mem["baseline"]["peak_above_inputs_bytes"]
    assert 60 * MB < ours < 100 * MB and 28 * MB < half < 50 * MB
    assert mem["ours"]["peak_rss_bytes"] >= mem["ours"]["rss_before_bytes"] + ours
    assert mem["ratio"] == pytest.approx(ours / half)
    assert res["verdicts"]["mem_fwd"]["verdict"] == "MISS"  # ~2 > 1.5

    # An op that allocates (almost) nothing, fwd+bwd, with the cotangent rebuilt in the
    # child from the output's shape.
    grad_case = next(c for c in bench_cases.cases_of(file) if c.name == "copy/8x16")
    child = bench.memory_child(
        file, grad_case, "ours", "fwdbwd", True, (torch.Size([8, 16]), torch.float32, "cpu")
    )
    assert child["note"] is None
    assert 0 <= child["peak_above_inputs_bytes"] < 8 * MB


def test_memory_falls_back_without_clear_refs(monkeypatch):
    monkeypatch.setattr(bench_memory, "_reset_peak", lambda: "cannot reset the peak RSS (test)")
    x = torch.ones(4)
    res = bench.measure_peak(lambda t: t * 2, (x,), "fwd", None)
    assert res["peak_above_inputs_bytes"] is None
    assert res["note"] == "cannot reset the peak RSS (test)"
    assert res["peak_rss_bytes"] > 0


def test_max_abs_diff():
    a = torch.tensor([1.0, math.inf, math.nan, 0.5])
    assert bench.max_abs_diff(a, a.clone()) == 0.0
    assert bench.max_abs_diff(a, torch.tensor([1.0, math.inf, math.nan, 0.25])) == 0.25
    assert bench.max_abs_diff(a, torch.tensor([1.0, math.inf, 0.0, 0.5])) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        bench.max_abs_diff(a, a[:2])


def test_update_readme(fake_run, tmp_path, capsys):
    _, report, _, results = fake_run
    readme = tmp_path / "README.md"
    before = "# Title\n\nIntro.\n\n<!-- bench:start -->\nold table\n"
    after = "<!-- bench:end -->\n\nMore text.\n"
    readme.write_text(before + after)
    argv = ["bench", "--update-readme", str(readme), "--from", str(results)]
    assert cli_main.main(argv) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nIntro.\n\n<!-- bench:start -->\n")
    assert text.endswith(after) and "old table" not in text
    table = text[text.index("<!-- bench:start -->") : text.index("<!-- bench:end -->")]
    assert "| op/shape | baseline | fwd | fwd+bwd | memory | target | verdict |" in table
    assert "| `slow/8x16` | fast sleep |" in table and "MISS" in table
    assert "`needs/8x16`" in table  # skipped cases are named
    assert report["machine"]["cpu_model"] in table and report["created"][:10] in table
    assert cli_main.main(argv) == 0
    assert readme.read_text() == text  # idempotent

    bare = tmp_path / "BARE.md"
    bare.write_text("no markers here\n")
    capsys.readouterr()
    assert cli_main.main(["bench", "--update-readme", str(bare), "--from", str(results)]) == 2
    assert "markers" in capsys.readouterr().err
    assert bare.read_text() == "no markers here\n"


def test_update_readme_default_paths(fake_run, tmp_path, monkeypatch):
    _, _, _, results = fake_run
    _write_cases(tmp_path / "benchmarks")
    (tmp_path / "benchmarks" / "results").mkdir()
    (tmp_path / "benchmarks" / "results" / "latest.json").write_text(results.read_text())
    (tmp_path / "README.md").write_text("<!-- bench:start --><!-- bench:end -->")
    monkeypatch.chdir(tmp_path)
    assert cli_main.main(["bench", "--update-readme"]) == 0
    assert "`copy/8x16`" in (tmp_path / "README.md").read_text()


def test_update_readme_lists_several_results_files_in_one_table(fake_run, tmp_path):
    _, report, _, results = fake_run
    second = tmp_path / "second.json"
    renamed = [{**case, "name": "other/" + case["name"]} for case in report["cases"]]
    second.write_text(json.dumps({**report, "cases": renamed}))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:start --><!-- bench:end -->")
    argv = ["bench", "--update-readme", str(readme), "--from", str(results), "--from", str(second)]
    assert cli_main.main(argv) == 0
    text = readme.read_text()
    for case in report["cases"]:
        assert f"`{case['name']}`" in text and f"`other/{case['name']}`" in text
