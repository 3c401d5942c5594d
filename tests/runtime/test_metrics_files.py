"""Counters in prometheus-client's multiprocess files: written by child processes, summed by
`MultiProcessCollector`, locked while their writer lives, and never switching the user's own
metrics (or anything else) at import."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from fa4doctor.runtime import counters as metrics

CHILD = textwrap.dedent("""
    import sys, torch
    from fa4doctor.dispatch import attention
    q = torch.randn(1, 4, 2, 8)
    for _ in range(int(sys.argv[1])):
        attention(q, q, q)
    for _ in range(int(sys.argv[2])):
        attention(q, q, q, attn_mask_type="causal")
""")


def _run_children(tmp_path: Path, counts, variable="FA4DOCTOR_METRICS_DIR"):
    env = {k: v for k, v in os.environ.items() if k not in ("FA4DOCTOR_METRICS_DIR", "PROMETHEUS_MULTIPROC_DIR")}
    env[variable] = str(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(a), str(b)], env=env) for a, b in counts]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(procs)


def _sum(tmp_path: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    return registry


@pytest.mark.slow
def test_children_files_sum_with_multiprocess_collector(tmp_path):
    _run_children(tmp_path, [(3, 2), (5, 0), (0, 4)])
    files = sorted(tmp_path.glob("counter_*.db"))
    assert len(files) == 3 and all("-" in f.name for f in files)
    registry = _sum(tmp_path)
    assert registry.get_sample_value("fa4doctor_dispatch_calls_total", {"backend": "sdpa"}) == 14
    fallbacks = [s for m in registry.collect() if m.name == "fa4doctor_dispatch_fallbacks" for s in m.samples]
    assert sum(s.value for s in fallbacks) == 14 and {s.labels["preferred"] for s in fallbacks} == {"fa4"}
    for f in files:  # the writers are gone: their shared locks went with them
        fd = os.open(f, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)


@pytest.mark.slow
def test_prometheus_multiproc_dir_is_used_without_double_counting(tmp_path):
    # With PROMETHEUS_MULTIPROC_DIR set, prometheus-client itself is in multiprocess mode in the
    # child; the dispatcher's counters must still write one file, not two.
    _run_children(tmp_path, [(2, 1)], variable="PROMETHEUS_MULTIPROC_DIR")
    registry = _sum(tmp_path)
    assert registry.get_sample_value("fa4doctor_dispatch_calls_total", {"backend": "sdpa"}) == 3


def test_live_writer_holds_its_lock_and_flushes_on_collect(tmp_path):
    registry = CollectorRegistry()
    counters = metrics.DispatchCounters(registry=registry, directory=tmp_path)
    tally = counters.tally("fa4", None)
    tally.n += 7
    assert registry.get_sample_value("fa4doctor_dispatch_calls_total", {"backend": "fa4"}) == 7
    (path,) = tmp_path.glob("counter_*.db")
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    assert _sum(tmp_path).get_sample_value("fa4doctor_dispatch_calls_total", {"backend": "fa4"}) == 7
    tally.n += 1
    counters.flush()
    assert _sum(tmp_path).get_sample_value("fa4doctor_dispatch_calls_total", {"backend": "fa4"}) == 8
    counters._sink.close()


HYGIENE = textwrap.dedent("""
    import sys, threading
    import prometheus_client.values as values
    before_class, before_threads = values.ValueClass, threading.active_count()
    import fa4doctor.dispatch
    import fa4doctor.runtime.dispatcher
    assert "flash_attn" not in sys.modules and "flash_attn_interface" not in sys.modules
    from prometheus_client import REGISTRY
    names = lambda: {m.name for m in REGISTRY.collect()}
    assert "fa4doctor_dispatch_calls" not in names(), "counters created at import"
    import torch
    q = torch.randn(1, 4, 2, 8)
    fa4doctor.dispatch.attention(q, q, q)
    assert "flash_attn" not in sys.modules and "flash_attn.cute" not in sys.modules
    assert "flash_attn_interface" not in sys.modules
    assert values.ValueClass is before_class
    assert threading.active_count() == before_threads, threading.enumerate()
    assert "fa4doctor_dispatch_calls" in names()
    print("ok")
""")


@pytest.mark.slow
def test_import_and_call_start_nothing(tmp_path):
    fakes = str(Path(__file__).parent / "fakes")  # importable FA modules: still never imported eagerly
    env = {k: v for k, v in os.environ.items() if k not in ("FA4DOCTOR_METRICS_DIR", "PROMETHEUS_MULTIPROC_DIR")}
    env["PYTHONPATH"] = fakes + os.pathsep + env.get("PYTHONPATH", "")
    env["FA4DOCTOR_METRICS_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", HYGIENE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_importing_the_package_does_not_import_torch():
    code = "import sys, fa4doctor.dispatch; assert 'torch' not in sys.modules; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


FORKER = textwrap.dedent("""
    import os, torch
    torch.set_num_threads(1)  # GNU OpenMP's thread pool does not survive fork()
    from fa4doctor.dispatch import attention
    from fa4doctor.runtime import counters as metrics
    q = torch.randn(1, 4, 2, 8)
    for _ in range(3):
        attention(q, q, q)
    pid = os.fork()
    for _ in range(2 if pid == 0 else 5):
        attention(q, q, q)
    metrics.counters().flush()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
""")


@pytest.mark.slow
def test_a_forked_child_writes_its_own_file_without_the_parents_counts(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("FA4DOCTOR_METRICS_DIR", "PROMETHEUS_MULTIPROC_DIR")}
    env["FA4DOCTOR_METRICS_DIR"] = str(tmp_path)
    subprocess.run([sys.executable, "-c", FORKER], env=env, check=True, timeout=60)
    assert len(list(tmp_path.glob("counter_*.db"))) == 2
    assert _sum(tmp_path).get_sample_value("fa4doctor_dispatch_calls_total", {"backend": "sdpa"}) == 10
