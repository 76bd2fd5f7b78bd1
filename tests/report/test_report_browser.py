"""The report as a browser shows it: headless Chromium renders every section, loads every image, and lays the
page out at a laptop's width (1280 px) and a phone's (390 px).

Screenshots of the whole page go to $INSTRUCTUNE_SCREENSHOTS when set (else the test's temporary folder), to
look at by eye:  INSTRUCTUNE_SCREENSHOTS=/tmp/shots pytest tests/report/test_report_browser.py
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

SECTIONS = ["results", "forgetting", "loss-curves", "retention-curves", "before-after", "cost", "examples", "provenance"]
CROWDED = ["results", "forgetting", "sequential", "loss-curves", "retention-curves", "before-after", "cost", "examples", "provenance"]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
WIDTHS = {"laptop": 1280, "phone": 390}
# Read in the page once it has loaded: the order and boxes of sections, tables wider than their box.
LAYOUT = """JSON.stringify({
  sections: [...document.querySelectorAll("main > section")].map(s => {
    const box = s.getBoundingClientRect(); return [s.id, Math.round(box.top + scrollY), Math.round(box.height)]; }),
  wideTables: [...document.querySelectorAll(".table-wrap")].filter(w => w.scrollWidth > w.clientWidth + 1)
    .map(w => (w.querySelector("caption") || {}).textContent || "(no caption)"),
  provenanceOpen: document.querySelector("#provenance details.fold").open,
  viewport: innerWidth, pageWidth: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
  images: document.images.length,
  imagesLoaded: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length })"""


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


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands in on
    fd 3, replies out on fd 4, NUL-separated JSON). Unlike --window-size, which stops at 500 px, it can lay a
    page out at a phone's width, evaluate scripts in it and capture the whole page."""

    def __init__(self, binary: str, profile: Path, timeout: float = 120) -> None:
        commands, self.send_fd = os.pipe()
        self.recv_fd, replies = os.pipe()
        # the pipes come in as the shell's stdin and stdout, and leave as the browser's fds 3 and 4
        self.proc = subprocess.Popen(
            ["sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null', binary, *FLAGS,
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=commands, stdout=replies, stderr=subprocess.DEVNULL)
        os.close(commands)
        os.close(replies)
        self.deadline = time.monotonic() + timeout
        self.buffer, self.count, self.events, self.session = b"", 0, [], None
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def send(self, method: str, **params: Any) -> dict:
        self.count += 1
        message = {"id": self.count, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.send_fd, json.dumps(message).encode() + b"\0")
        while (reply := self.receive()).get("id") != self.count:
            self.events.append(reply.get("method"))
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    def receive(self) -> dict:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.recv_fd], [], [], max(self.deadline - time.monotonic(), 0))
            chunk = os.read(self.recv_fd, 1 << 20) if ready else b""
            assert chunk, "chromium stopped answering (closed, or past the deadline)"
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def open(self, url: str, width: int) -> dict:
        """Load `url` in a viewport `width` px wide (a phone's below 500 px) and return its LAYOUT."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                  mobile=width < 500)
        self.send("Page.enable")
        self.send("Page.navigate", url=url)
        while "Page.loadEventFired" not in self.events:
            self.events.append(self.receive().get("method"))
        return json.loads(self.send("Runtime.evaluate", expression=LAYOUT, returnByValue=True)["result"]["value"])

    def screenshot(self, path: Path, width: int, height: int) -> None:
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        os.close(self.send_fd)
        os.close(self.recv_fd)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("INSTRUCTUNE_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow
def test_chromium_renders_every_section_and_loads_every_image(chromium: str, demo_report: tuple,
                                                              tmp_path: Path) -> None:
    _, paths = demo_report
    url = paths["html"].resolve().as_uri()
    shot = tmp_path / "report.png"
    run_chromium(chromium, tmp_path / "p1", f"--screenshot={shot}", "--window-size=1280,4000", url)
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        colors = im.convert("RGB").getcolors(maxcolors=1 << 24)
        assert len(colors) > 2000  # charts, text, gradients: far from a blank page
        assert max(colors)[0] / (1280 * 4000) < 0.9  # a blank page is one colour

    dom = run_chromium(chromium, tmp_path / "p2", "--dump-dom", url).stdout
    assert re.findall(r'<section id="([^"]+)"', dom) == SECTIONS
    loaded = re.search(r'<body[^>]*data-images-loaded="(\d+)"', dom)
    assert loaded, "the page's load script did not run"
    assert int(loaded.group(1)) == len(re.findall(r"<img\b", dom)) == 7


@pytest.mark.slow
@pytest.mark.parametrize("device", list(WIDTHS))
def test_many_runs_read_results_first_and_fit_the_width(chromium: str, crowded_report: tuple, device: str,
                                                        tmp_path: Path, shots: Path) -> None:
    _, paths = crowded_report
    width = WIDTHS[device]
    browser = Browser(chromium, tmp_path / "profile")
    try:
        page = browser.open(paths["html"].resolve().as_uri(), width)
        browser.screenshot(shots / f"report-{width}px.png", width, page["height"])
    finally:
        browser.close()
    assert page["viewport"] == width
    assert [sid for sid, _, _ in page["sections"]] == CROWDED
    assert page["imagesLoaded"] == page["images"] == 12
    # results open the page; provenance comes last, folded to its title
    tops = {sid: top for sid, top, _ in page["sections"]}
    assert tops["results"] < tops["forgetting"] < tops["sequential"] < tops["provenance"]
    assert page["provenanceOpen"] is False
    assert page["sections"][-1][2] < 300  # the folded provenance: a title and a line, not pages of config
    assert page["pageWidth"] <= width  # nothing pushes the whole page sideways
    if device == "laptop":
        assert page["wideTables"] == []  # every table fits: no sideways scrolling, peak MB in view
    with Image.open(shots / f"report-{width}px.png") as im:
        assert im.size == (width, page["height"])
