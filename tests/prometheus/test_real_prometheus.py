"""A real Prometheus (Debian's /usr/bin/prometheus) scrapes a real `fa4doctor serve` while several
separate processes call `fa4doctor.dispatch.attention` on CPU tensors that fall back
(no FlashAttention installed: SDPA, reason `not_installed`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WRITER = textwrap.dedent("""
    import sys, torch
    from fa4doctor.dispatch import attention
    q = torch.randn(1, 16, 2, 32)
    for _ in range(int(sys.argv[1])):
        attention(q, q, q, attn_mask_type="causal")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def http_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def query(prometheus: str, promql: str) -> list[dict]:
    body = http_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    return body["data"]["result"] if body and body.get("status") == "success" else []


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_prometheus_receives_the_summed_fallback_counters(tmp_path, prometheus_binary, processes):
    pytest.importorskip("torch", reason="the training processes call attention(), which needs torch")
    metrics_dir = tmp_path / "metrics"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    serve_port, prom_port = free_port(), free_port()
    serve = subprocess.Popen([sys.executable, "-m", "fa4doctor", "serve", "--host", "127.0.0.1",
                              "--port", str(serve_port), "--metrics-dir", str(metrics_dir),
                              "--smoke-level", "off", "--interval", "30"],
                             env=env, stderr=subprocess.DEVNULL)
    processes.append(serve)
    wait_for(lambda: _ok(f"http://127.0.0.1:{serve_port}/healthz"), 30, "fa4doctor serve")
    config = tmp_path / "prometheus.yml"
    config.write_text(textwrap.dedent(f"""
        global: {{scrape_interval: 1s, scrape_timeout: 1s}}
        scrape_configs:
          - job_name: fa4doctor
            static_configs: [{{targets: ["127.0.0.1:{serve_port}"]}}]
    """))
    prometheus = subprocess.Popen([prometheus_binary, f"--config.file={config}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes.append(prometheus)
    api = f"http://127.0.0.1:{prom_port}"
    wait_for(lambda: _ok(f"{api}/-/ready"), 60, "Prometheus to be ready")

    counts = (2, 3, 4)  # three separate training processes, each falling back on every call
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(n)],
                                env=env | {"FA4DOCTOR_METRICS_DIR": str(metrics_dir / f"pod-{i}")})
               for i, n in enumerate(counts)]
    processes.extend(writers)
    assert all(w.wait(timeout=120) == 0 for w in writers)

    promql = "fa4doctor_dispatch_fallbacks_total"
    result = wait_for(lambda: [r for r in query(api, promql) if float(r["value"][1]) == sum(counts)],
                      60, f"{promql} == {sum(counts)} in Prometheus")
    [series] = result
    labels = {k: v for k, v in series["metric"].items() if k not in ("instance", "job")}
    assert labels == {"__name__": promql, "preferred": "fa4", "selected": "sdpa", "reason": "not_installed"}
    calls = query(api, 'fa4doctor_dispatch_calls_total{backend="sdpa"}')
    assert [float(r["value"][1]) for r in calls] == [sum(counts)]
    assert query(api, 'up{job="fa4doctor"}')[0]["value"][1] == "1"


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False
