"""Tests of the ``softmaxkit bench`` harness, on a tiny fake cases folder."""

from __future__ import annotations

import json
import math
import sys
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


# ------------------------------------------------------------------ peers, floor, device

PEER_CASES = textwrap.dedent(
    """
    import contextlib

    import torch

    from softmaxkit.cli.bench import Case, Peer

    ENTERED = []


    def small(quick):
        g = torch.Generator().manual_seed(0)
        return (torch.randn(8, 16, generator=g).requires_grad_(),)


    @contextlib.contextmanager
    def setting():
        ENTERED.append(1)
        yield


    def double(x):
        return x * 2


    CASES = [
        Case("peered/8x16", small, double, lambda x: x.mul(2), "x.mul", atol=0.0, floor=True,
             peers={
                 "plain": Peer(lambda x: x + x, atol=0.0),
                 "compiled": Peer(double, compile=True, atol=0.0),
                 "variant": Peer(double, context=setting, variant=True),
                 "bare": lambda x: 2 * x,
                 "missing": Peer(double, requires=("softmaxkit_no_such_module",)),
                 "unavailable": Peer(double, available=lambda: "not here"),
                 "broken": lambda x: x.boom(),
                 "off": Peer(lambda x: x * 3, atol=1e-6),
             }),
    ]
    """
)


@pytest.fixture(scope="module")
def peer_run(tmp_path_factory):
    """One timing run of a case with every kind of peer; torch.compile is a stand-in that
    records its calls (the real compiler is exercised by the benchmarks, not here)."""
    tmp = tmp_path_factory.mktemp("peers")
    folder = tmp / "benchmarks"
    folder.mkdir()
    (folder / "cases_peers.py").write_text(PEER_CASES)
    out = tmp / "out.json"
    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append(kwargs)
        return fn

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_main, "SUBCOMMANDS", {"bench": cli_main.SUBCOMMANDS["bench"]})
        mp.setattr(torch, "compile", fake_compile)
        argv = ["bench", "--cases", str(folder), "--no-memory", "--repeats", "3"]
        rc = cli_main.main([*argv, "--out", str(out)])
    report = json.loads(out.read_text())
    return rc, report, report["cases"][0], compiled, folder


def test_peer_definitions():
    setup, fn = (lambda quick: ()), (lambda x: x)
    case = bench.Case("a", setup, fn, fn, "b", peers={"p": fn})
    assert isinstance(case.peer("p"), bench.Peer) and case.peer("p").fn is fn
    for bad in ("ours", "baseline", "floor", ""):
        with pytest.raises(ValueError, match="bad peer name"):
            bench.Case("a", setup, fn, fn, "b", peers={bad: fn})
    with pytest.raises(TypeError, match="must be a Peer or callable"):
        bench.Case("a", setup, fn, fn, "b", peers={"p": 3})
    with pytest.raises(TypeError, match="callable"):
        bench.Peer(3)


def test_peers_are_timed_interleaved_with_their_ratios(peer_run):
    rc, report, res, compiled, _ = peer_run
    assert rc == 0 and report["schema"] == bench.SCHEMA_VERSION == 2
    assert compiled == [{"dynamic": False}]  # compiled once per case, shapes static
    info = res["peers"]
    assert info["compiled"]["status"] == "ok" and info["compiled"]["compile_s"] >= 0
    assert "compile_s" not in info["plain"]
    assert info["plain"]["max_abs_diff"] == 0.0 and info["plain"]["correct"] is True
    assert info["off"]["correct"] is False  # compared with ours: a note, not a failed case
    assert any("peer off" in n and "atol" in n for n in res["notes"])
    assert res["status"] == "ok"
    assert info["missing"]["status"] == info["unavailable"]["status"] == "skipped"
    assert "softmaxkit_no_such_module" in info["missing"]["note"]
    assert info["unavailable"]["note"] == "not here"
    assert info["broken"]["status"] == "error" and "boom" in info["broken"]["note"]
    ran = ["plain", "compiled", "variant", "bare", "off"]
    for mode in ("fwd", "fwdbwd"):
        t = res["time"][mode]
        assert list(t["peers"]) == ran
        med = {i: t[i]["median_ms"] for i in ("ours", "baseline")}
        for name in ran:
            entry = t["peers"][name]
            assert entry["repeats"] == 3 and len(entry["samples_ms"]) == 3
            if name == "variant":  # ours under another setting: to the baseline, as ours
                assert entry["ratio"] == pytest.approx(entry["median_ms"] / med["baseline"])
                assert set(entry["ratio_to"]) == set(ran) - {"variant"}
            else:
                assert entry["ratio"] == pytest.approx(med["ours"] / entry["median_ms"])


def test_variant_runs_inside_its_context(peer_run):
    *_, folder = peer_run
    module = sys.modules["_softmaxkit_bench_cases_peers"]
    assert len(module.ENTERED) >= 1 + 2 * (1 + 3)  # check, then warm-up + repeats per mode


def test_floor_column(peer_run):
    _, report, res, _, _ = peer_run
    floor = res["time"]["fwd"]["floor"]
    assert floor["repeats"] == 3
    ran = {"plain", "compiled", "variant", "bare", "off"}
    assert set(floor["ratio"]) == {"ours", "baseline", *ran}
    assert floor["ratio"]["ours"] == pytest.approx(
        res["time"]["fwd"]["ours"]["median_ms"] / floor["median_ms"], rel=1e-6
    )
    assert "floor" not in res["time"]["fwdbwd"]  # the floor is a forward figure
    table = bench.format_table(report["cases"])
    header = table.splitlines()[0]
    for col in ("x plain", "x compiled", "x variant", "x missing", "x broken", "x floor"):
        assert col in header
    row = table.splitlines()[2]
    assert " skip " in row and " error " in row


def test_markdown_table_peer_columns_and_legend(peer_run, tmp_path):
    _, report, _, _, _ = peer_run
    table = bench.markdown_table(report)
    head = table.splitlines()[0]
    assert head.startswith("| op/shape | baseline | fwd | fwd+bwd | x plain | x compiled |")
    assert "| x floor | memory | target | verdict |" in head
    assert "Peer columns" in table and "x floor: ours' forward time" in table
    # a results file without peers (schema 1) keeps the old columns
    cases = [{k: v for k, v in c.items() if k != "peers"} for c in report["cases"]]
    old = {**report, "cases": cases}
    for case in cases:
        case["time"] = {m: {k: v for k, v in t.items() if k not in ("peers", "floor")}
                        for m, t in case["time"].items()}  # fmt: skip
    assert bench.markdown_table(old).splitlines()[0] == (
        "| op/shape | baseline | fwd | fwd+bwd | memory | target | verdict |"
    )


def test_memory_child_of_a_peer(peer_run):
    *_, folder = peer_run
    file = folder / "cases_peers.py"
    case = bench_cases.cases_of(file)[0]
    child = bench.memory_child(file, case, "plain", "fwd", True, None)
    assert child["note"] is None and 0 <= child["peak_above_inputs_bytes"] < 8 * MB


def test_backend_compile_column_with_a_stand_in(monkeypatch):
    import contextlib

    import softmaxkit
    from softmaxkit.cli import bench_peers

    peer = bench_peers.backend_compile(lambda x: x * 2)
    if not hasattr(softmaxkit, "use_backend"):
        assert "use_backend" in bench_cases.missing_requirement(peer)
    used = []

    @contextlib.contextmanager
    def use_backend(name):
        used.append(name)
        yield

    monkeypatch.setattr(softmaxkit, "use_backend", use_backend, raising=False)
    assert bench_cases.missing_requirement(peer) is None
    case = bench.Case("m", lambda q: (torch.ones(3),), lambda x: x * 2, lambda x: x * 2, "b",
                      peers=bench_peers.map_and_loss_peers(lambda x: x * 2, None))  # fmt: skip
    assert list(case.peers) == [bench_peers.BACKEND_COMPILE]
    fn = bench_cases.impl_fn(case, bench_peers.BACKEND_COMPILE)
    assert torch.equal(fn(torch.ones(3)), torch.full((3,), 2.0)) and used == ["compile"]


def test_cce_torch_compile_loads_without_triton(tmp_path, monkeypatch):
    """The cut-cross-entropy package __init__ needs Triton; its torch_compile entry does not:
    loaded on its own under a bare package (a fake package stands in here)."""
    from softmaxkit.cli import bench_peers

    pkg = tmp_path / "cut_cross_entropy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'triton'\", name='triton')\n"
    )
    (pkg / "torch_compile.py").write_text(
        "def torch_compile_linear_cross_entropy(e, c, targets):\n    return 'entry'\n"
    )
    for name in [m for m in sys.modules if m.startswith("cut_cross_entropy")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    bench_peers.load_cce_torch_compile.cache_clear()
    try:
        assert bench_peers._no_cce() is None
        assert bench_peers.load_cce_torch_compile()(1, 2, 3) == "entry"
    finally:
        bench_peers.load_cce_torch_compile.cache_clear()
        for name in [m for m in sys.modules if m.startswith("cut_cross_entropy")]:
            del sys.modules[name]


def test_to_device_keeps_leaves_and_moves_modules():
    x = torch.ones(2, requires_grad=True)
    layer = torch.nn.Linear(2, 2)
    assert bench.to_device((x, 3), None)[0] is x
    moved = bench.to_device((x, layer, 3, torch.arange(2)), "meta")
    assert moved[0].device.type == "meta" and moved[0].is_leaf and moved[0].requires_grad
    assert moved[1].weight.device.type == "meta" and moved[2] == 3


def test_device_option(tmp_path, capsys):
    folder = _write_cases(tmp_path)
    argv = ["bench", "--cases", str(folder), "-k", "copy", "--no-memory", "--repeats", "1"]
    if not torch.cuda.is_available():
        assert cli_main.main([*argv, "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert cli_main.main([*argv, "--device", "nonsense"]) == 2
    out = tmp_path / "cpu.json"
    assert cli_main.main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["cases"][0]["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_with_memory(tmp_path):
    folder = _write_cases(tmp_path)
    out = tmp_path / "cuda.json"
    argv = ["bench", "--cases", str(folder), "-k", "copy", "--repeats", "2", "--device", "cuda"]
    assert cli_main.main([*argv, "--out", str(out)]) == 0
    res = json.loads(out.read_text())["cases"][0]
    assert res["device"] == "cuda" and res["status"] == "ok"
    mem = res["memory"]["fwdbwd"]["ours"]
    assert mem["note"] is None and mem["peak_above_inputs_bytes"] >= 0
    assert "cuda_peak_bytes" in mem
