"""`bench/scrape.py` runs to the end and prints every figure it promises (the README quotes them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench" / "scrape.py"


@pytest.mark.slow
def test_scrape_bench_prints_latency_memory_and_idle_cpu():
    out = subprocess.run([sys.executable, str(BENCH), "--writers", "2", "--scrapes", "10", "--idle", "0.5"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    for phrase in ("scrape latency over 10 sequential GET /metrics", "encode the dispatch families",
                   "daemon RSS after scrapes", "daemon idle CPU over 0.5 s"):
        assert phrase in out, (phrase, out)
