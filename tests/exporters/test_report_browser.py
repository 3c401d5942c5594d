"""The report page in a real browser: headless Chromium, offline (the flags of
scripts/report_screenshot.sh), builds the DOM we assert on and takes a screenshot. Skips only
where no Chromium binary is found (scripts/test.sh installs Debian's)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from fa4doctor.environment import load_environment
from fa4doctor.exporters.report_html import render_html
from fa4doctor.probe.ledger import read_ledger
from fa4doctor.smoke.page import build
from fa4doctor.smoke.speed_matrix import BenchFile
from report_helpers import FIXTURES, NOW, h100_bench, parse

ROOT = Path(__file__).resolve().parents[2]
BROWSER = os.environ.get("CHROMIUM") or next(
    (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium binary (chromium, chromium-browser or "
                                                        "google-chrome on PATH, or $CHROMIUM); scripts/test.sh "
                                                        "installs Debian's chromium")
OFFLINE = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    env = load_environment(FIXTURES / "h100-fa4-b40-check.json")
    read = read_ledger(FIXTURES / "h100-fa4-b40-ledger.json")
    env = env.with_ledger(read.entries, read.speed)
    bench = h100_bench(env)
    path = tmp_path_factory.mktemp("report") / "h100.html"
    path.write_text(render_html(build(env, "snapshot", bench=BenchFile("b.json", bench.shapes, bench.results),
                                      now=NOW)), encoding="utf-8")
    return path


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    return subprocess.run([BROWSER, *OFFLINE, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120, check=True)


def test_the_dom_chromium_builds(page, tmp_path):
    dom = parse(chromium(tmp_path, "--dump-dom", page.as_uri()).stdout)
    rows = [a for tag, a, _ in dom if tag == "tr" and "data-key" in a]
    cells = [(a, text) for tag, a, text in dom if tag == "td" and "c" in a.get("class", "").split()]
    assert len(rows) == 118 and len(cells) == 4 * len(rows)
    colours = Counter(a["class"].split()[1] for a, _ in cells)
    assert (colours["pass"], colours["wrong"], colours["refused"]) == (202, 54, 2)
    d72 = next(i for i, (_, a, _) in enumerate(dom) if a.get("data-key") == "d72 causal bf16")
    fwd, bwd = [(a, text) for _, a, text in dom[d72:] if a.get("data-backend") == "fa4"][:2]
    assert fwd[0]["class"] == "c pass" and bwd[0]["class"] == "c wrong" and bwd[1] == "dq 21\u00d7"
    wins = [(a["data-col"], text) for _, a, text in dom if "win" in a.get("class", "").split()]
    speed_rows = [a for tag, a, _ in dom if tag == "tr" and "data-shape" in a]
    assert len(wins) == len(speed_rows) == 8
    assert wins[:2] == [("fa4", "\u2605 322"), ("sdpa cudnn", "\u2605 330")]


def test_the_screenshot(page, tmp_path):
    png = tmp_path / "h100.png"
    chromium(tmp_path, "--hide-scrollbars", "--window-size=1400,1800", f"--screenshot={png}", page.as_uri())
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1400, 1800)
    assert len(data) > 50_000  # a blank page of this size compresses to a few kB


def test_the_screenshot_script(page, tmp_path):
    png = tmp_path / "script.png"
    result = subprocess.run([ROOT / "scripts" / "report_screenshot.sh", page, png], capture_output=True, text=True,
                            timeout=240, env={**os.environ, "CHROMIUM": BROWSER})
    assert result.returncode == 0, result.stderr
    width, height = struct.unpack(">II", png.read_bytes()[16:24])
    assert width == 1400 and height > 3000  # measured: the whole page, not a window of it
