"""The report as a browser shows it: headless Chromium renders every section and loads every image."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

SECTIONS = ["provenance", "results", "loss-curves", "before-after", "forgetting", "cost", "examples"]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu"]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; installed here when missing and possible (root with apt-get), else the test skips."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -q && apt-get install -y -q chromium", shell=True, capture_output=True,
                       timeout=900)
        found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium is not installed and could not be installed (apt-get install -y chromium)")
    return found


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    # a private profile per call: concurrent runs never share (and lock) one
    return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=180)


@pytest.mark.slow
def test_chromium_renders_every_section_and_loads_every_image(chromium: str, demo_report: tuple,
                                                              tmp_path: Path) -> None:
    _, paths = demo_report
    url = paths["html"].resolve().as_uri()
    shot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path / "p1", f"--screenshot={shot}", "--window-size=1280,4000", url)
    assert shot.exists()
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        rgb = im.convert("RGB")
        colors = rgb.getcolors(maxcolors=1 << 24)
        assert len(colors) > 2000  # charts, text, gradients: far from a blank page
        background = max(colors)[0] / (1280 * 4000)
        assert background < 0.9  # a blank page is one colour

    dom = run_chromium(chromium, tmp_path / "p2", "--dump-dom", url).stdout
    ids = re.findall(r'<section id="([^"]+)"', dom)
    assert ids == SECTIONS
    images = re.findall(r"<img\b", dom)
    loaded = re.search(r'<body[^>]*data-images-loaded="(\d+)"', dom)
    assert loaded, "the page's load script did not run"
    assert int(loaded.group(1)) == len(images) == 6
