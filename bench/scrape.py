"""Benchmark of `fa4doctor serve` (prints figures; not a timed test).

Starts the real daemon on loopback with 64 writer processes' counter files in its metrics
directory (each with every backend and a spread of fallback reasons, their shared locks held as
live writers hold them, so compaction leaves every file in place), then measures:

  * scrape latency of GET /metrics, p50 and p99 over --scrapes sequential requests, then where
    it goes: the HTTP round trip of a route that does no work, and the scrape's own work step by
    step in this process (reading the directory, encoding, what a new state or report costs);
  * the daemon's resident memory (VmRSS) when ready and after the scrapes, with its largest
    mappings (Python's heap, shared libraries such as libnvidia-ml) from /proc/PID/smaps;
  * its CPU use while idle (no scrapes, between probe cycles) over --idle seconds.

Targets from issue 5: p99 < 5 ms, RSS < 60 MiB, idle CPU < 1% of a core.

    python bench/scrape.py [--writers 64] [--scrapes 2000] [--idle 20]
"""

from __future__ import annotations

import argparse
import fcntl
import http.client
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

from prometheus_client.mmap_dict import MmapedDict

from fa4doctor.runtime.counters import calls_key, fallbacks_key
from fa4doctor.dispatch.reasons import BackendName, ReasonCode

ROOT = Path(__file__).resolve().parents[1]


def write_writer_file(path: Path, seed: int) -> None:
    """One writer's file, keyed as the dispatcher keys it."""
    out = MmapedDict(str(path))
    for backend in BackendName:
        out.write_value(calls_key(backend.value), 100.0 + seed, 0.0)
    for reason in list(ReasonCode)[seed % 5: seed % 5 + 6]:
        out.write_value(fallbacks_key(("fa4", "sdpa", reason.value)), 3.0, 0.0)
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


def time_keepalive_gets(port: int, path: str, n: int) -> list[float]:
    """GETs on one persistent connection, as Prometheus scrapes: no connect, no new server thread."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    timings = []
    try:
        for _ in range(n):
            begin = time.perf_counter()
            connection.request("GET", path)
            connection.getresponse().read()
            timings.append((time.perf_counter() - begin) * 1000)
    finally:
        connection.close()
    return timings


def timed(work, n: int) -> tuple[float, float, float]:
    timings = []
    for _ in range(n):
        begin = time.perf_counter()
        work()
        timings.append((time.perf_counter() - begin) * 1000)
    return percentiles(timings)


def in_process_breakdown(metrics: Path, check: Path, n: int) -> list[tuple[str, tuple | float]]:
    """The scrape's own work without HTTP, on the daemon's collector over the same directory and
    report, step by step; each step timed over `n` calls, in turn."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    from fa4doctor.serve.collector import Collector
    from fa4doctor.exporters.textfile import Families
    from fa4doctor.serve.daemon import DaemonState

    state = DaemonState(ready=True, check=json.loads(check.read_text()), probe_up=True)
    collector = Collector(lambda: state, metrics_dir=str(metrics))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    first = time.perf_counter()
    collector.exposition(generate_latest, CONTENT_TYPE_PLAIN_0_0_4)
    first_ms = (time.perf_counter() - first) * 1000
    dispatch = collector._dispatch_families()

    def fresh_state() -> None:  # what the first scrape after a cycle pays
        nonlocal state
        state = DaemonState(ready=True, check=state.check, probe_up=True)
        collector.exposition(generate_latest, CONTENT_TYPE_PLAIN_0_0_4)

    return [
        ("the scrape's work (Collector.exposition, what /metrics runs)",
         timed(lambda: collector.exposition(generate_latest, CONTENT_TYPE_PLAIN_0_0_4), n)),
        ("  read the metrics directory (CounterReader.read)", timed(collector._reader.read, n)),
        ("  encode the dispatch families", timed(lambda: generate_latest(Families(dispatch)), n)),
        ("  the first scrape after a cycle ends (health and text rebuilt)", timed(fresh_state, n // 10)),
        ("  the first scrape of a new report (renders it; timed once)", first_ms),
        ("for comparison: everything collected and encoded per scrape (generate_latest(registry))",
         timed(lambda: generate_latest(registry), n)),
    ]


# What NVML costs a Python process, step by step, in a fresh interpreter (the daemon polls NVML
# in-process every probe cycle; on a machine without a driver this prints why not).
NVML_STEPS = """
import sys
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024
steps = [("python", rss())]
try:
    import pynvml
    steps.append(("import pynvml", rss()))
    pynvml.nvmlInit()
    steps.append(("nvmlInit", rss()))
    for i in range(pynvml.nvmlDeviceGetCount()):
        pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))
    steps.append(("a poll of every GPU", rss()))
    pynvml.nvmlShutdown()
    steps.append(("nvmlShutdown", rss()))
except Exception as exc:
    steps.append((f"stopped: {type(exc).__name__}: {exc}", rss()))
print(", ".join(f"{name} {mib:.1f}" for name, mib in steps))
"""


def nvml_rss_steps() -> str:
    out = subprocess.run([sys.executable, "-c", NVML_STEPS], capture_output=True, text=True, timeout=60)
    return (out.stdout or out.stderr).strip().splitlines()[-1] if (out.stdout or out.stderr) else "no output"


def mappings_rss(pid: int, top: int = 8) -> list[tuple[str, float]]:
    """Resident MiB by mapping (shared library, [heap], [anon]...), largest first, from smaps."""
    sizes: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and not head[0].endswith(":"):  # a mapping's header: address perms offset dev inode [path]
            name = os.path.basename(head[5]) if len(head) > 5 else "[anon]"
        elif head and head[0] == "Rss:":
            sizes[name] = sizes.get(name, 0) + int(head[1])
    return [(k, v / 1024) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:top]]


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


def wait_ready(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url + "/readyz", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.1)


def measure(port: int, pid: int, work: Path, args: argparse.Namespace) -> dict:
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    found = {"rss_ready": rss_mib(pid), "body": urllib.request.urlopen(url + "/metrics", timeout=5).read()}
    for _ in range(50):  # warm up
        urllib.request.urlopen(url + "/metrics", timeout=5).read()
    found["metrics"] = percentiles(time_gets(url + "/metrics", args.scrapes))
    # the HTTP round trip alone: same server, a route that does no work
    found["healthz"] = percentiles(time_gets(url + "/healthz", args.scrapes))
    found["keepalive"] = percentiles(time_keepalive_gets(port, "/metrics", args.scrapes))
    found["keepalive_healthz"] = percentiles(time_keepalive_gets(port, "/healthz", args.scrapes))
    found["breakdown"] = in_process_breakdown(work / "metrics", work / "check.json", args.scrapes)
    found["rss"], found["mappings"] = rss_mib(pid), mappings_rss(pid)
    time.sleep(2)
    before = cpu_seconds(pid)
    time.sleep(args.idle)
    found["idle_pct"] = 100 * (cpu_seconds(pid) - before) / args.idle
    return found


def report(found: dict, args: argparse.Namespace) -> None:
    body, (p50, p99, worst) = found["body"], found["metrics"]
    (f50, f99, _), (k50, k99, _) = found["healthz"], found["keepalive"]
    h50, h99, _ = found["keepalive_healthz"]
    print(f"writers' files: {args.writers} (8 container subdirectories, all locked live)")
    print(f"scrape body: {len(body)} bytes, {len(body.splitlines())} lines")
    print(f"scrape latency over {args.scrapes} sequential GET /metrics: "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.2f} ms (target p99 < 5 ms)")
    print(f"  of which HTTP round trip (GET /healthz, a new connection each): p50 {f50:.2f} ms, "
          f"p99 {f99:.2f} ms")
    print(f"  on one kept-alive connection (as Prometheus scrapes): GET /metrics p50 {k50:.2f} ms, "
          f"p99 {k99:.2f} ms; GET /healthz p50 {h50:.2f} ms, p99 {h99:.2f} ms")
    print("  in-process, this benchmark's own process (same collector, directory and report):")
    for label, figures in found["breakdown"]:
        if isinstance(figures, float):
            print(f"    {label}: {figures:.3f} ms")
        else:
            print(f"    {label}: p50 {figures[0]:.3f} ms, p99 {figures[1]:.3f} ms")
    print(f"load average while measuring: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"daemon RSS after scrapes: {found['rss']:.1f} MiB (target < 60 MiB); "
          f"when ready, before any: {found['rss_ready']:.1f} MiB")
    print("  largest resident mappings, MiB: " + ", ".join(f"{n} {mib:.1f}" for n, mib in found["mappings"]))
    print(f"  NVML in a fresh Python process, VmRSS MiB after each step: {nvml_rss_steps()}")
    print(f"daemon idle CPU over {args.idle:g} s: {found['idle_pct']:.3f}% of a core (target < 1%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--scrapes", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fa4doctor-bench-"))
    locks = make_writer_files(work / "metrics", args.writers)
    port, daemon = start_daemon(work, work / "metrics")
    try:
        found = measure(port, daemon.pid, work, args)
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        for fd in locks:
            os.close(fd)
        shutil.rmtree(work, ignore_errors=True)
    report(found, args)


if __name__ == "__main__":
    main()
