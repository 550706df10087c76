"""The HTML report in a real browser: headless Chromium renders a demo-like report offline.

Chromium comes from the Debian package ``chromium``. Where it is missing, the fixture installs it
(as root, with apt-get, under a time limit; set GRADGUARD_NO_INSTALL=1 to forbid that); where it
cannot be had, the tests skip and say why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from gradguard.report import write_report
from tests.test_report_data import make_store
from tests.test_report_lab import make_lab_results

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]
EVIL = "<script>alert(1)</script>"


def _find() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


def _install() -> str:
    """Try apt-get; return why Chromium is still missing (or '' when the install worked)."""
    if os.environ.get("GRADGUARD_NO_INSTALL"):
        return "Chromium is not installed and GRADGUARD_NO_INSTALL is set"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "Chromium is not installed and installing it needs root (apt-get install chromium)"
    if not shutil.which("apt-get"):
        return "Chromium is not installed and there is no apt-get to install it with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [(["apt-get", "update"], 300), (["apt-get", "install", "-y", "--no-install-recommends", "chromium"], 900)]
    for cmd, limit in steps:
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return f"'{' '.join(cmd)}' took more than {limit} s"
        if done.returncode != 0:
            return f"'{' '.join(cmd)}' failed: {done.stderr.strip()[-300:]}"
    return ""


@pytest.fixture(scope="module")
def chromium():
    path = _find()
    if path is None:
        reason = _install()
        path = _find()
        if path is None:
            reason = reason or "apt-get reported success but no chromium binary is on PATH"
            print(f"skipping the browser tests: {reason}")
            pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    """Like `gradguard demo`: lab claims, and an RNN run without clipping and one with."""
    tmp = tmp_path_factory.mktemp("browser")
    make_store(tmp / "a.sqlite", name="tanh RNN, no clipping", steps=200).close()
    make_store(tmp / "b.sqlite", name="tanh RNN, ClipNorm(1.0)", modules=[EVIL, "layers.0", "head"], steps=200, seed=1).close()
    return write_report([tmp / "a.sqlite", tmp / "b.sqlite", make_lab_results(tmp / "lab")], tmp / "report.html")


def _run(chromium, tmp_path, *args) -> subprocess.CompletedProcess:
    cmd = [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_the_page_has_its_sections_in_the_browser_dom(chromium, demo_report, tmp_path):
    dom = _run(chromium, tmp_path, "--dump-dom", demo_report.as_uri()).stdout
    sections = re.findall(r'<section id="([^"]+)" data-section="([^"]+)"', dom)
    ids = [sid for sid, _ in sections]
    assert ids[:2] == ["findings", "comparison"]
    for run in ("run-1", "run-2"):
        for key in ("gradient-flow", "timeline", "units", "clipping", "update-ratio", "events"):
            assert f"{run}-{key}" in ids
    assert "run-1-timesteps" in ids and ids[-1] == "lab-1"
    assert len(re.findall(r'<article class="claim ', dom)) == 3
    assert len(re.findall(r"<img ", dom)) >= 10
    # the module named like a script tag is text in the DOM, never an element
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "<script" not in dom


def test_the_screenshot_shows_a_rendered_page(chromium, demo_report, tmp_path):
    shot = tmp_path / "report.png"
    _run(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", demo_report.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (2400, 1280, 3)
    gray = pixels.mean(axis=2)
    assert gray.std() > 20, "the screenshot is (nearly) blank"
    assert (gray < 200).mean() > 0.02, "hardly any ink on the page"
    # the error badge's red (#b42318) is there: the inline CSS was applied
    red = (np.abs(pixels - [0xB4, 0x23, 0x18]).sum(axis=2) < 30).sum()
    assert red > 200
