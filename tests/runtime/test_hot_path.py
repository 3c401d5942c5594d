"""The per-call path of `attention()`: what it reads and skips, and the overhead benchmark's report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from fa4doctor.dispatch import attention
from fa4doctor.runtime import counters as metrics, dispatcher as runtime

BENCH = Path(__file__).parents[2] / "bench" / "dispatch_overhead.py"


def test_no_metrics_file_means_no_clock_read(monkeypatch):
    q = torch.randn(1, 4, 2, 8)
    attention(q, q, q)
    monkeypatch.setattr(runtime, "_clock", lambda: pytest.fail("clock read without a metrics file"))
    attention(q, q, q)


def test_metrics_file_is_refreshed_from_the_hot_path_once_due(tmp_path):
    counters = metrics.DispatchCounters(registry=CollectorRegistry(), directory=tmp_path)
    metrics.install(counters)
    q = torch.randn(1, 4, 2, 8)
    attention(q, q, q)
    assert not list(tmp_path.glob("counter_*.db"))  # not due yet: nothing written
    counters.deadline = 0.0
    attention(q, q, q)
    (written,) = tmp_path.glob("counter_*.db")
    assert counters._sink.totals[metrics.calls_key("sdpa")] == 2 and written.stat().st_size > 0
    metrics.install(None)


def _training_of_last_plan() -> bool:
    return list(runtime._plans.values())[-1].spec.training


@pytest.mark.parametrize("grad_on", ["q", "k", "v", "sink"])
def test_the_key_tracks_whether_autograd_records_the_call(grad_on):
    q, k, v = (torch.randn(1, 4, 2, 8, requires_grad=name == grad_on) for name in "qkv")
    sink = torch.zeros(2, requires_grad=grad_on == "sink")
    attention(q, k, v, learnable_sink=sink)
    assert _training_of_last_plan() and len(runtime._plans) == 1
    with torch.no_grad():
        attention(q, k, v, learnable_sink=sink)
    assert not _training_of_last_plan() and len(runtime._plans) == 2
    attention(q.detach(), k.detach(), v.detach(), learnable_sink=sink.detach())  # same spec as no_grad
    assert len(runtime._plans) == 2


@pytest.mark.slow
def test_dynamic_shapes_bench_prints_a_row_per_path_pattern_and_count():
    out = subprocess.run([sys.executable, str(BENCH.parent / "dynamic_shapes.py"), "--rounds", "2", "--block", "5",
                          "--counts", "2,3", "--layers", "1,2"], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    rows = {tuple(line.split()[:3]): line.split() for line in out.splitlines() if line.startswith(("compiled", "python"))}
    assert set(rows) == {(path, layers, count) for path in ("compiled", "python") for layers in "12" for count in "23"}
    float(rows[("python", "2", "3")][3])  # a figure
    assert "after/before" not in out  # one tree: no ratio column
    assert "after  python        3 lengths: 3 / 1 / -" in out  # three keys, one plan class


@pytest.mark.slow
def test_overhead_bench_prints_the_breakdown():
    out = subprocess.run([sys.executable, str(BENCH), "--rounds", "3", "--block", "2"], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {"direct", "attention", "added", "control", "adapter", "dispatcher", "dispatch", "beside", "floor"}
    assert "backend=sdpa" in out and "gc=on" in out
    float(rows["added"].split()[1])
