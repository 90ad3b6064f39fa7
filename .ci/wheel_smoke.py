"""Smoke test of an installed (non-editable) softmaxkit, run from outside the source tree.

Usage: python wheel_smoke.py EXPECTED_VERSION WORKDIR (with the venv's python; the
``softmaxkit`` console script is looked up next to it).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"wheel smoke: FAILED: {what}")
    print(f"wheel smoke: ok: {what}")


def main() -> None:
    expected, work = sys.argv[1], Path(sys.argv[2])
    import softmaxkit

    where = Path(softmaxkit.__file__).resolve().parent
    check("site-packages" in where.parts, f"softmaxkit imported from the install ({where})")
    check(softmaxkit.__version__ == expected, f"__version__ {softmaxkit.__version__} == {expected}")
    check((where / "py.typed").is_file(), "py.typed installed")

    packages = ["softmaxkit"] + [
        m.name
        for m in pkgutil.walk_packages(softmaxkit.__path__, "softmaxkit.")
        if m.ispkg and not any(part.startswith("_") for part in m.name.split("."))
    ]
    names = 0
    for name in packages:
        module = importlib.import_module(name)
        public = getattr(module, "__all__", ())  # softmaxkit.cli has none
        missing = [n for n in public if not hasattr(module, n)]
        check(not missing, f"{name}.__all__ ({len(public)} names) importable; missing: {missing}")
        names += len(public)
    check(names > 0, f"{names} public names of {len(packages)} packages importable: {packages}")

    script = str(Path(sys.executable).with_name("softmaxkit"))

    def cli(*args: str) -> str:
        done = subprocess.run([script, *args], capture_output=True, text=True, cwd=work)
        check(done.returncode == 0, f"softmaxkit {' '.join(args)} exit 0\n{done.stderr[-2000:]}")
        return done.stdout

    check(cli("--version").strip() == f"softmaxkit {expected}", "softmaxkit --version")
    check("usage: softmaxkit demo" in cli("demo", "--help"), "softmaxkit demo --help")
    out = work / "report"
    cli("report", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    check(report.get("softmaxkit_version") == expected, "report.json names the version")
    check((out / "report.html").stat().st_size > 10_000, "report.html written")


if __name__ == "__main__":
    main()
