"""Benchmark of `fa4doctor serve` (prints figures; not a timed test).

Starts the real daemon on loopback with 64 writer processes' counter files in its metrics
directory (each with every backend and a spread of fallback reasons, their shared locks held so
every file is checked as live), then measures:

  * scrape latency of GET /metrics, p50 and p99 over --scrapes sequential requests;
  * the daemon's resident memory (VmRSS) after the scrapes;
  * its CPU use while idle (no scrapes, between probe cycles) over --idle seconds.

Targets from issue 5: p99 < 5 ms, RSS < 60 MiB, idle CPU < 1% of a core.

    python bench/scrape.py [--writers 64] [--scrapes 2000] [--idle 20]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from fa4doctor.dispatch.reasons import BackendName, ReasonCode

ROOT = Path(__file__).resolve().parents[1]


def write_writer_file(path: Path, seed: int) -> None:
    out = MmapedDict(str(path))
    for backend in BackendName:
        out.write_value(mmap_key("fa4doctor_dispatch_calls", "fa4doctor_dispatch_calls_total",
                                 ["backend"], [backend.value], "calls"), 100.0 + seed, 0.0)
    for reason in list(ReasonCode)[seed % 5: seed % 5 + 6]:
        out.write_value(mmap_key("fa4doctor_dispatch_fallbacks", "fa4doctor_dispatch_fallbacks_total",
                                 ["preferred", "selected", "reason"], ["fa4", "sdpa", reason.value],
                                 "fallbacks"), 3.0, 0.0)
    out.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(values: list[float]) -> tuple[float, float, float]:
    values = sorted(values)
    return statistics.median(values), values[int(0.99 * (len(values) - 1))], values[-1]


def time_gets(url: str, n: int) -> list[float]:
    timings = []
    for _ in range(n):
        begin = time.perf_counter()
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
        timings.append((time.perf_counter() - begin) * 1000)
    return timings


def collect_in_process(metrics: Path, check: Path, n: int) -> tuple[float, float, float]:
    """The scrape's own work without HTTP: the same collector, rendered to the text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    from fa4doctor.exporters.collector import Collector
    from fa4doctor.exporters.daemon import DaemonState

    state = DaemonState(ready=True, check=json.loads(check.read_text()), probe_up=True)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(lambda: state, metrics_dir=str(metrics)))
    timings = []
    for _ in range(n):
        begin = time.perf_counter()
        generate_latest(registry)
        timings.append((time.perf_counter() - begin) * 1000)
    return percentiles(timings)


def make_writer_files(metrics: Path, writers: int) -> list[int]:
    """One file per writer in 8 container subdirectories, each locked as its live writer does
    (one flock per open file description, so one process can stand in for all 64)."""
    locks = []
    for i in range(writers):
        pod = metrics / f"pod-{i % 8}"
        pod.mkdir(parents=True, exist_ok=True)
        path = pod / f"counter_{1000 + i}-{i:08x}.db"
        write_writer_file(path, i)
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        locks.append(fd)
    return locks


def start_daemon(work: Path, metrics: Path) -> tuple[int, subprocess.Popen]:
    """The real daemon; its probe child replays this machine's own `fa4doctor check --json`."""
    check = subprocess.run([sys.executable, "-m", "fa4doctor", "check", "--json"], capture_output=True,
                           text=True, cwd=ROOT)
    (work / "check.json").write_text(check.stdout if check.stdout.strip() else json.dumps(
        {"schema": "fa4doctor.check", "environment": {}}))
    probe = (f"{sys.executable} -c \"import sys; sys.stdout.write(open('{work / 'check.json'}').read());"
             f" sys.exit(3)\"")
    port = free_port()
    daemon = subprocess.Popen([sys.executable, "-m", "fa4doctor", "serve", "--host", "127.0.0.1",
                               "--port", str(port), "--metrics-dir", str(metrics), "--smoke-level", "off",
                               "--interval", "3600", "--probe-command", probe],
                              cwd=ROOT, stderr=subprocess.DEVNULL)
    return port, daemon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--scrapes", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fa4doctor-bench-"))
    metrics = work / "metrics"
    locks = make_writer_files(metrics, args.writers)
    port, daemon = start_daemon(work, metrics)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(url + "/readyz", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        body = urllib.request.urlopen(url + "/metrics", timeout=5).read()
        for _ in range(50):  # warm up
            urllib.request.urlopen(url + "/metrics", timeout=5).read()
        p50, p99, worst = percentiles(time_gets(url + "/metrics", args.scrapes))
        # the HTTP round trip alone: same server, a route that does no work
        f50, f99, _ = percentiles(time_gets(url + "/healthz", args.scrapes))
        c50, c99, _ = collect_in_process(metrics, work / "check.json", args.scrapes)
        rss = rss_mib(daemon.pid)
        time.sleep(2)
        before = cpu_seconds(daemon.pid)
        time.sleep(args.idle)
        idle_pct = 100 * (cpu_seconds(daemon.pid) - before) / args.idle
        print(f"writers' files: {args.writers} (8 container subdirectories, all locked live)")
        print(f"scrape body: {len(body)} bytes, {len(body.splitlines())} lines")
        print(f"scrape latency over {args.scrapes} sequential GET /metrics: "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.2f} ms (target p99 < 5 ms)")
        print(f"  of which HTTP round trip (GET /healthz): p50 {f50:.2f} ms, p99 {f99:.2f} ms")
        print(f"  of which collect + encode in-process: p50 {c50:.2f} ms, p99 {c99:.2f} ms")
        print(f"load average while measuring: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        print(f"daemon RSS after scrapes: {rss:.1f} MiB (target < 60 MiB)")
        print(f"daemon idle CPU over {args.idle:g} s: {idle_pct:.3f}% of a core (target < 1%)")
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        for fd in locks:
            os.close(fd)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
