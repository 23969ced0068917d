"""report.html in a real browser: headless Chromium loads the page from the output folder, takes a screenshot, and
the test fails on console errors, a blank page or a missing section; the page needs no network."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from loopmeta.run_traced import main

pytestmark = pytest.mark.real_model


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium: apt-get install chromium (CI installs it)")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    pytest.importorskip("transformers.models.deepseek_ocr2")
    out = tmp_path_factory.mktemp("html")
    assert main(["--out", str(out), "--max-new-tokens", "5", "--hardware", "h100"]) == 0
    return out


def run_chromium(out, *flags):
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--enable-logging=stderr", "--v=0", *flags, (out / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120, cwd=out)


def test_the_page_renders_every_section_without_errors(page):
    from PIL import Image

    shot = page / "screenshot.png"
    done = run_chromium(page, f"--screenshot={shot}", "--window-size=1280,3000")
    assert shot.is_file(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    image = Image.open(shot).convert("L")
    histogram = image.histogram()
    assert max(histogram) < 0.97 * sum(histogram), "the page is blank"  # mostly white, never only white
    dom = run_chromium(page, "--dump-dom").stdout
    report = json.loads((page / "report.json").read_text())
    for title in ("Loop nest", "Stages per step group", "Steps", "MoE expert load", "Work", "Roofline bounds"):
        assert f"<h2>{title}</h2>" in dom, title
    assert dom.count("<svg") >= 3  # the loop nest, the steps chart, the expert heat map
    assert all(f"<td>{s['phase']}</td>" in dom for s in report["steps"])
    html = (page / "report.html").read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", html)  # nothing to fetch
    assert "<script" not in html
