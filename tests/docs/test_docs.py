"""The built API reference: formulas rendered by the bundled MathJax in headless Chromium,
and every internal link resolving to an existing page and anchor.

The site is built here (``sphinx -W``) unless ``SOFTMAXKIT_DOCS_HTML`` names a built
directory (CI builds once and passes it). Skipped when Chromium or Sphinx is absent, unless
``SOFTMAXKIT_REQUIRE_BROWSER=1`` (then those are failures).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = os.environ.get("SOFTMAXKIT_REQUIRE_BROWSER") == "1"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _missing(what: str) -> None:
    if REQUIRED:
        pytest.fail(f"{what} is absent and SOFTMAXKIT_REQUIRE_BROWSER=1")
    pytest.skip(f"{what} is absent")


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory) -> Path:
    given = os.environ.get("SOFTMAXKIT_DOCS_HTML")
    if given:
        path = Path(given)
        assert (path / "index.html").is_file(), f"no index.html in {path}"
        return path
    try:
        import myst_parser  # noqa: F401
        import sphinx  # noqa: F401
    except ImportError:
        _missing("Sphinx (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("docs") / "html"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html"]
    run = subprocess.run(
        [*cmd, str(ROOT / "docs"), str(out)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


@pytest.fixture(scope="module")
def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    _missing("Chromium")
    raise AssertionError  # unreachable


def _dom(browser: str, page: Path, tmp_path: Path) -> str:
    profile = tmp_path / f"profile-{page.stem}"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--dump-dom",
        page.as_uri(),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def _text_outside_scripts(dom: str) -> str:
    return re.sub(r"<script\b.*?</script>", "", dom, flags=re.S | re.I)


@pytest.mark.parametrize("page", ["index.html", "api/functional.html"])
def test_page_renders_in_chromium(html_dir: Path, browser: str, page: str, tmp_path: Path):
    dom = _dom(browser, html_dir / page, tmp_path)
    assert "<body" in dom
    body = _text_outside_scripts(dom)
    if page == "api/functional.html":
        # MathJax 3 replaces each \( ... \) span with an <mjx-container>.
        assert body.count("<mjx-container") >= 10, "formulas not rendered by MathJax"
        assert "arxiv.org/abs/" in body, "no paper linked"
    assert "\\(" not in body and "\\[" not in body, "raw TeX left in the page"
    for href, anchor in _internal_links(dom):
        _check_link(html_dir / page, href, anchor)


_ids: dict[Path, set[str]] = {}


def _anchors(path: Path) -> set[str]:
    if path not in _ids:
        text = path.read_text(encoding="utf-8")
        _ids[path] = {unescape(m) for m in re.findall(r'\b(?:id|name)="([^"]+)"', text)}
    return _ids[path]


def _internal_links(html: str) -> list[tuple[str, str]]:
    links = []
    for raw in re.findall(r'\bhref="([^"]*)"', html):
        url = urlsplit(unescape(raw))
        if url.scheme in ("http", "https", "mailto") or url.netloc:
            continue
        links.append((unquote(url.path), unquote(url.fragment)))
    return links


def _check_link(page: Path, href: str, anchor: str) -> None:
    target = page if href == "" else (page.parent / href).resolve()
    assert target.exists(), f"{page.name}: link to missing {href}"
    if anchor and target.suffix == ".html":
        assert anchor in _anchors(target), f"{page.name}: {href}#{anchor} has no such anchor"


def test_every_internal_link_resolves(html_dir: Path):
    pages = sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.parts)
    assert len(pages) >= 12, pages
    for page in pages:
        for href, anchor in _internal_links(page.read_text(encoding="utf-8")):
            _check_link(page, href, anchor)


def test_offline_mathjax_bundled(html_dir: Path):
    page = (html_dir / "api" / "functional.html").read_text(encoding="utf-8")
    scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', page, flags=re.I)
    assert scripts and all(not s.startswith(("http:", "https:", "//")) for s in scripts), scripts


def test_missing_docstring_is_caught():
    """The conf.py check that fails the build: a class or function without its own docstring
    (a class does not borrow its base's) is caught; every public name today has one."""
    pytest.importorskip("sphinx")
    import importlib
    import importlib.util

    spec = importlib.util.spec_from_file_location("softmaxkit_docs_conf", ROOT / "docs" / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)

    class Documented:
        """Here."""

    class Bare(Documented):
        pass

    def bare():
        pass

    assert conf._own_doc(Documented) == "Here."
    assert conf._own_doc(Bare) is None and conf._own_doc(bare) is None
    conf._check_every_package_listed()  # raises when a public package has no page
    for _page, _title, module in conf.PACKAGES:
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", []):
            assert conf._own_doc(getattr(mod, name)), f"{module}.{name} has no docstring"
