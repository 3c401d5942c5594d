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

With --scaling 64,1000,10000 it instead compares, at each file count (64 live writers, the rest
dead), the daemon with prometheus_client's MultiProcessCollector serving the same files from its
own process (p50/p99 of GET /metrics and RSS of each), times the scrape reader in-process against
an older revision's (--before REV), and keeps scraping while the daemon compacts the dead files
(issue 14: p99 <= 5 ms at 1,000 files, <= 20 ms at 10,000, no scrape stalled, RSS <= 60 MiB).

    python bench/scrape.py [--writers 64] [--scrapes 2000] [--idle 20]
    python bench/scrape.py --scaling 64,1000,10000 [--scrapes 500] [--before 7ccd527]
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
import types
import urllib.request
from pathlib import Path

from fa4doctor.runtime.counter_file import CounterFile
from fa4doctor.runtime.counters import calls_key, fallbacks_key
from fa4doctor.dispatch.reasons import BackendName, ReasonCode

ROOT = Path(__file__).resolve().parents[1]


def write_writer_file(path: Path, seed: int) -> None:
    """One writer's file, keyed as the dispatcher keys it."""
    out = CounterFile(path)
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
    from fa4doctor.serve.state import DaemonState

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
    return make_scaling_files(metrics, writers, live=writers)


def start_daemon(work: Path, metrics: Path, extra: tuple[str, ...] = ()) -> tuple[int, subprocess.Popen]:
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
                               "--interval", "3600", "--probe-command", probe, *extra],
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


# -- --scaling: many files, against prometheus_client's MultiProcessCollector (issue 14) ------------

# prometheus_client's own multiprocess exporter over the same directory: MultiProcessCollector.merge
# on every *.db in the root and its subdirectories (its collect() globs the root only), served by
# its own start_http_server, in a process of its own.
MPC_SERVER = """
import glob, os, sys, threading
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
root, port = sys.argv[1], int(sys.argv[2])
class Everywhere(MultiProcessCollector):
    def collect(self):
        return self.merge(glob.glob(os.path.join(root, "*.db")) + glob.glob(os.path.join(root, "*", "*.db")))
registry = CollectorRegistry()
Everywhere(registry, root)
start_http_server(port, addr="127.0.0.1", registry=registry)
print("listening", flush=True)
threading.Event().wait()
"""


def make_scaling_files(metrics: Path, files: int, live: int) -> list[int]:
    """`files` writers' files in 8 subdirectories, the first `live` locked (live), the rest dead."""
    locks = []
    for i in range(files):
        pod = metrics / f"pod-{i % 8}"
        pod.mkdir(parents=True, exist_ok=True)
        path = pod / f"counter_{1000 + i}-{i:08x}.db"
        write_writer_file(path, i)
        if i < live:
            fd = os.open(path, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_SH)
            locks.append(fd)
    return locks


def age_all(metrics: Path, seconds: float) -> None:
    then = time.time() - seconds
    for path in metrics.rglob("*.db"):
        os.utime(path, (then, then))


def proc_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bounded_gets(url: str, n: int, budget_s: float) -> list[float]:
    """Up to `n` GETs (a new connection each), stopping after `budget_s` seconds (at least 20)."""
    timings, begin = [], time.monotonic()
    while len(timings) < n and (len(timings) < 20 or time.monotonic() - begin < budget_s):
        timings += time_gets(url, 1)
    return timings


def measure_mpc(metrics: Path, args: argparse.Namespace) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", MPC_SERVER, str(metrics), str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()
        url = f"http://127.0.0.1:{port}/metrics"
        first = time_gets(url, 1)[0]
        timings = bounded_gets(url, args.scrapes, args.budget)
        return {"first": first, "gets": timings, "rss": proc_mib(server.pid, "VmRSS"),
                "hwm": proc_mib(server.pid, "VmHWM")}
    finally:
        server.kill()
        server.wait()


def compacted(body: bytes) -> float:
    for line in body.decode().splitlines():
        if line.startswith("fa4doctor_metrics_dir_compacted_files_total "):
            return float(line.split()[1])
    return 0.0


def measure_ours(work: Path, metrics: Path, files: int, live: int, args: argparse.Namespace) -> dict:
    """The daemon over the same files: dead ones young enough that its first compaction (at start)
    leaves them, old enough that its settle pass takes them; then the compaction 30 s after start
    absorbs them while this keeps scraping."""
    age_all(metrics, 27.0)  # compact_grace is 30 s: the compaction at start leaves them, the settle pass 5 s later takes them
    port, daemon = start_daemon(work, metrics, ("--compact-interval", "30", "--settle-interval", "5"))
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        found = {"first": time_gets(url + "/metrics", 1)[0]}  # reads every file once
        time.sleep(10)  # their mtime passes the 30 s grace; the settle pass at 5 s marks the dead ones
        time_gets(url + "/metrics", 1)  # their last read
        found["gets"] = bounded_gets(url + "/metrics", args.scrapes, args.budget)
        found["keepalive"] = time_keepalive_gets(port, "/metrics", args.scrapes)  # as Prometheus scrapes
        found["rss"], found["hwm"] = proc_mib(daemon.pid, "VmRSS"), proc_mib(daemon.pid, "VmHWM")
        during, deadline = [], time.monotonic() + 150
        while files > live and time.monotonic() < deadline:  # scrape on through the compaction
            begin = time.perf_counter()
            body = urllib.request.urlopen(url + "/metrics", timeout=30).read()
            ms = (time.perf_counter() - begin) * 1000
            if time.monotonic() - started >= 29.5:  # the second compaction is due 30 s after the first
                during.append(ms)
            if compacted(body) >= files - live:
                found["compaction_s"] = time.monotonic() - started - 30
                break
            time.sleep(0.01)
        found["during"] = during
        found["rss_after"], found["hwm_after"] = proc_mib(daemon.pid, "VmRSS"), proc_mib(daemon.pid, "VmHWM")
        return found
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def in_process_readers(metrics: Path, before: str | None, n: int) -> list[tuple[str, tuple]]:
    """`CounterReader.read()` timed in this process on the same files: this tree's (after one
    settle pass) and, with --before REV, that revision's multiproc.py."""
    from fa4doctor.serve import multiproc

    rows = []
    if before:
        source = subprocess.run(["git", "show", f"{before}:fa4doctor/serve/multiproc.py"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
        old = types.ModuleType("multiproc_before")
        sys.modules[old.__name__] = old  # dataclasses look their module up
        exec(compile(source, f"{before}:multiproc.py", "exec"), old.__dict__)
        reader = old.CounterReader(metrics)
        reader.read()
        rows.append((f"before ({before})", timed(reader.read, n)))
        reader.close()
    reader = multiproc.CounterReader(metrics)
    reader.read()
    reader.settle(grace_seconds=0)
    reader.read()
    rows.append(("after (this tree)", timed(reader.read, n)))
    reader.close()
    return rows


def scaling(args: argparse.Namespace) -> None:
    import prometheus_client

    version = getattr(prometheus_client, "__version__", None) or subprocess.run(
        [sys.executable, "-m", "pip", "show", "prometheus_client"], capture_output=True, text=True).stdout.split(
        "Version: ")[-1].split()[0]
    print(f"GET /metrics, a new connection each; {args.live} live writers' files (locked), the rest dead, "
          f"in 8 subdirectories; prometheus_client {version}; {os.cpu_count()} CPUs")
    print(f"{'files':>6}  {'exporter':<46} {'first ms':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'RSS MiB':>8} {'peak MiB':>9} {'scrapes':>8}")
    for files in args.scaling:
        work = Path(tempfile.mkdtemp(prefix="fa4doctor-bench-"))
        metrics = work / "metrics"
        locks = make_scaling_files(metrics, files, min(args.live, files))
        try:
            mpc = measure_mpc(metrics, args)
            readers = in_process_readers(metrics, args.before, min(args.scrapes, 200))
            ours = measure_ours(work, metrics, files, min(args.live, files), args)
        finally:
            for fd in locks:
                os.close(fd)
            shutil.rmtree(work, ignore_errors=True)
        for name, found in (("fa4doctor serve (settled dead files)", ours),
                            ("prometheus_client MultiProcessCollector", mpc)):
            p50, p99, worst = percentiles(found["gets"])
            print(f"{files:>6}  {name:<46} {found['first']:>9.2f} {p50:>8.2f} {p99:>8.2f} {worst:>8.2f} "
                  f"{found['rss']:>8.1f} {found['hwm']:>9.1f} {len(found['gets']):>8}")
        ratio = percentiles(mpc["gets"])[1] / percentiles(ours["gets"])[1]
        print(f"{files:>6}  p99 MultiProcessCollector / fa4doctor: {ratio:.1f}x")
        p50, p99, worst = percentiles(ours["keepalive"])
        print(f"{files:>6}  fa4doctor serve on one kept-alive connection (as Prometheus scrapes): p50 {p50:.2f} ms, "
              f"p99 {p99:.2f} ms, max {worst:.2f} ms")
        for name, (p50, p99, _worst) in readers:
            print(f"{files:>6}  in-process CounterReader.read, {name}: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        if ours["during"]:
            p50, p99, worst = percentiles(ours["during"])
            print(f"{files:>6}  compaction of {files - args.live} dead files done {ours.get('compaction_s', float('nan')):.2f} s "
                  f"after it was due; {len(ours['during'])} scrapes from then until done: p50 {p50:.2f} ms, "
                  f"p99 {p99:.2f} ms, max {worst:.2f} ms; daemon RSS after {ours['rss_after']:.1f} MiB "
                  f"(peak {ours['hwm_after']:.1f} MiB)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--scrapes", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--scaling", type=lambda text: [int(n) for n in text.split(",")],
                        help="compare with prometheus_client's MultiProcessCollector at these file counts "
                             "(e.g. 64,1000,10000) instead")
    parser.add_argument("--live", type=int, default=64, help="--scaling: how many of the files are live")
    parser.add_argument("--budget", type=float, default=30.0, help="--scaling: seconds of scrapes per exporter")
    parser.add_argument("--before", help="--scaling: also time this git revision's CounterReader in-process")
    args = parser.parse_args()
    if args.scaling:
        scaling(args)
        return

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
