"""HTTP routes, concurrent scrapes, and the real `fa4doctor serve` process under SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fa4doctor.serve.collector import Collector
from fa4doctor.serve.state import DaemonState
from fa4doctor.serve.server import make_server
from tests.serve.helpers import check_report, printing, write_counters

FB = ("fa4", "sdpa", "not_installed")


def get(url: str, accept: str = "") -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def serving(tmp_path):
    holder = {"state": DaemonState()}
    collector = Collector(lambda: holder["state"], metrics_dir=str(tmp_path), renderers={})
    server = make_server("127.0.0.1", 0, state=lambda: holder["state"], collector=collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", holder, tmp_path
    server.shutdown()
    server.server_close()


def test_routes_before_and_after_the_first_probe(serving):
    url, holder, _ = serving
    assert get(url + "/healthz")[0] == 200
    assert get(url + "/readyz")[0] == 503
    status, kind, body = get(url + "/report.json")
    assert status == 503 and json.loads(body)["error"] == "no probe report yet"
    holder["state"] = DaemonState(ready=True, check=check_report(healthy=False), probe_up=True)
    assert get(url + "/readyz")[0] == 200
    status, kind, body = get(url + "/report.json")
    assert status == 200 and kind == "application/json" and json.loads(body)["healthy"] is False
    status, kind, body = get(url + "/")
    assert status == 200 and all(f'href="{r}"' in body for r in ("/metrics", "/healthz", "/readyz", "/report.json"))
    assert get(url + "/nope")[0] == 404


def test_metrics_text_and_openmetrics(serving):
    url, _, root = serving
    write_counters(root / "counter_1-aaaaaaaa.db", {"sdpa": 3}, {FB: 3})
    status, kind, body = get(url + "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    [calls] = families["fa4doctor_dispatch_calls"].samples
    assert calls.labels == {"backend": "sdpa"} and calls.value == 3
    status, kind, body = get(url + "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and kind.startswith("application/openmetrics-text") and body.endswith("# EOF\n")
    assert body.count("# EOF") == 1, "the cached part and the per-scrape part make one exposition"
    write_counters(root / "counter_1-aaaaaaaa.db", {"sdpa": 5})
    families = {f.name: f for f in text_string_to_metric_families(get(url + "/metrics")[2])}
    assert families["fa4doctor_dispatch_calls"].samples[0].value == 5


@pytest.mark.slow
def test_many_concurrent_scrapes_with_a_messy_directory(serving):
    url, _, root = serving
    for i in range(64):
        write_counters(root / f"counter_{i}-{i:08x}.db", {"sdpa": 1}, {FB: 1})
    (root / "counter_x-corrupt0.db").write_bytes(os.urandom(3000))
    (root / "foreign.db").write_bytes(b"\x00" * 10)

    def scrape(_):
        status, _, body = get(url + "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        return status, families["fa4doctor_dispatch_calls"].samples[0].value

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(scrape, range(400)))
    assert results == [(200, 64.0)] * 400
    assert get(url + "/healthz")[0] == 200


def test_a_collector_that_raises_gives_500_and_the_server_keeps_serving(tmp_path):
    class Boom:
        def collect(self):
            raise RuntimeError("boom")

    server = make_server("127.0.0.1", 0, state=DaemonState, collector=Boom())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert get(url + "/metrics")[0] == 500 and get(url + "/healthz")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def start_serve(tmp_path, *args: str) -> tuple[subprocess.Popen, str]:
    """`python -m fa4doctor serve` on a free loopback port; returns the process and its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "fa4doctor", "serve", "--host", "127.0.0.1",
                             "--port", "0", *args], stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"PYTHONPATH": os.getcwd()})
    line = proc.stderr.readline()
    assert "listening on" in line, line + proc.stderr.read()
    return proc, line.rsplit(" ", 1)[1].strip().rstrip("/")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_sigterm_and_sigint(tmp_path, signum):
    probe = printing(tmp_path, "probe", check_report())
    proc, url = start_serve(tmp_path, "--interval", "1", "--smoke-level", "off",
                            "--metrics-dir", str(tmp_path / "m"),
                            "--probe-command", " ".join(probe))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and get(url + "/readyz")[0] != 200:
            time.sleep(0.1)
        assert get(url + "/readyz")[0] == 200
        assert json.loads(get(url + "/report.json")[2])["schema"] == "fa4doctor.check"
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_port_in_use_is_a_usage_error(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "fa4doctor", "serve", "--host", "127.0.0.1",
                              "--port", str(port)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--host/--port" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args, needle", [
    (["--smoke-level", "long"], "--smoke-level"),
    (["--port", "70000"], "--port"),
    (["--interval", "0"], "--interval"),
])
def test_bad_flags_exit_2_naming_the_flag(args, needle):
    from click.testing import CliRunner

    from fa4doctor.cli import cli
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 2 and needle in result.output


def test_an_unusable_metrics_dir_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = subprocess.run([sys.executable, "-m", "fa4doctor", "serve", "--port", "0",
                          "--metrics-dir", str(blocker / "sub")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--metrics-dir" in out.stderr and "Traceback" not in out.stderr
