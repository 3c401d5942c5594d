"""Fault injection (issue 13): the daemon serving on loopback while training-process writers count
into the metrics directory and smoke-style recorders write the ledger, and everything that can
go wrong on a shared node goes wrong: FIFOs and symlinks (one to /dev/urandom, one to a live
writer's file) appear, live files are corrupted and truncated in place, writers are killed with
SIGKILL and restart, garbage files appear, and the ledger becomes unreadable to one of its users.

Asserted throughout: no scrape takes 2 s or more, the node's counters never decrease, and no
ledger entry a writer was told was recorded is ever missing (a writer that cannot read the
ledger is refused, never allowed to write over it). About 15 s, loopback only, every child
killed at the end.

The user who cannot read the ledger is uid 65534 (a helper process drops to it with `os.setuid`)
when the test runs as root; otherwise the ledger is made mode 000 for the same user.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fa4doctor.probe.ledger import read_ledger
from fa4doctor.serve.collector import Collector
from fa4doctor.serve.daemon import Daemon, ServeConfig
from fa4doctor.serve.server import make_server
from tests.serve.helpers import check_report, printing

REPO = Path(__file__).resolve().parents[2]
H100 = json.loads((REPO / "examples" / "h100-fa4-b36.json").read_text())["environment"]
SCRAPE_LIMIT_S = 2.0
RUN_S = 12.0
ROOT = os.geteuid() == 0

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from prometheus_client import CollectorRegistry
    from fa4doctor.runtime.counters import DispatchCounters

    counters = DispatchCounters(CollectorRegistry(), Path(sys.argv[1]))  # what attention() writes
    tally = counters.tally("sdpa", ("fa4", "sdpa", "not_installed"))
    counters.flush()
    print(counters._sink.path, flush=True)
    while True:
        tally.n += 7
        counters.flush()
        time.sleep(0.01)
""")

RECORDER = textwrap.dedent("""
    import json, os, sys
    import filelock  # imported before a setuid: the interpreter's tree may be unreadable after it
    from fa4doctor.environment import CaseClass, LedgerEntry
    from fa4doctor.names import BackendName
    from fa4doctor.probe.ledger import LedgerError, read_ledger, record

    path, prefix, count, nobody = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    klass = CaseClass(dtype="bf16", head_dim_qk=128, head_dim_v=128, attn_mask_type="causal", window=False)
    read_ledger(path)
    if nobody:
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
    results = {}
    for i in range(count):
        case = f"{prefix}-{i}"
        entry = LedgerEntry(backend=BackendName.FA4, fingerprint="fp", case=case, case_class=klass,
                            direction="fwd", outcome="pass")
        try:
            record([entry], path)
            results[case] = "recorded"
        except LedgerError:
            results[case] = "refused"
    print(json.dumps(results), flush=True)
""")


class Node:
    """The daemon in this process (threads), writers and recorders as child processes."""

    def __init__(self, tmp_path: Path, shared: Path):
        self.tmp = tmp_path
        self.metrics = tmp_path / "metrics"
        self.metrics.mkdir()
        self.ledger = shared / "ledger.json"  # in a directory every user of the node may enter
        self.env = os.environ | {"PYTHONPATH": str(REPO)}
        (tmp_path / "writer.py").write_text(WRITER)
        (tmp_path / "recorder.py").write_text(RECORDER)
        config = ServeConfig(interval=1.0, smoke_level="off", compact_interval=0.5, compact_grace=1.0, settle_interval=0.3,
                             metrics_dir=str(self.metrics), ledger=str(self.ledger),
                             probe_command=printing(tmp_path, "probe", check_report(environment=H100)))
        self.daemon = Daemon(config, nvml_factory=lambda: None)
        collector = Collector(lambda: self.daemon.state, reader=self.daemon.reader,  # settled as in production
                              metrics_lock=self.daemon.metrics_lock, renderers={})
        self.server = make_server("127.0.0.1", 0, state=lambda: self.daemon.state, collector=collector)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.threads = [threading.Thread(target=self.server.serve_forever, daemon=True),
                        threading.Thread(target=self.daemon.run, daemon=True)]
        self.writers: list[tuple[subprocess.Popen, Path]] = []
        self.children: list[subprocess.Popen] = []
        self.fifos: list[Path] = []

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def writer(self, container: str) -> Path:
        proc = subprocess.Popen([sys.executable, str(self.tmp / "writer.py"), str(self.metrics / container)],
                                stdout=subprocess.PIPE, text=True, env=self.env)
        path = Path(proc.stdout.readline().strip())
        self.writers.append((proc, path))
        return path

    def recorder(self, prefix: str, count: int, nobody: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, str(self.tmp / "recorder.py"), str(self.ledger), prefix,
                                 str(count), "1" if nobody else "0"], stdout=subprocess.PIPE, text=True,
                                env=self.env)
        self.children.append(proc)
        return proc

    def fifo(self, path: Path) -> None:
        os.mkfifo(path)
        self.fifos.append(path)

    def stop(self) -> None:
        self.daemon.stop()
        self.server.shutdown()
        self.server.server_close()
        for proc in [p for p, _ in self.writers] + self.children:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for fifo in self.fifos:  # a reader stuck in open() (a regression) is freed
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass


def scrape(url: str) -> tuple[float, float, dict]:
    begin = time.monotonic()
    with urllib.request.urlopen(url, timeout=SCRAPE_LIMIT_S) as response:
        body = response.read().decode()
    seconds = time.monotonic() - begin
    families = {f.name: f for f in text_string_to_metric_families(body)}
    calls = sum(s.value for s in families["fa4doctor_dispatch_calls"].samples)
    files = {s.labels["state"]: s.value for s in families["fa4doctor_metrics_dir_files"].samples}
    return seconds, calls, files


def corrupt_in_place(path: Path) -> None:
    with open(path, "r+b") as f:  # the writer's mmap sees it too: its keys are gone for good
        f.seek(12)
        f.write(b"\xff" * 48)


@pytest.fixture
def shared_dir():
    """Where the ledger lives: pytest's tmp_path sits under a 0700 directory uid 65534 cannot enter."""
    path = Path(tempfile.mkdtemp(prefix="fa4doctor-faults-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_nothing_hangs_nothing_decreases_nothing_is_lost(tmp_path, shared_dir):
    node = Node(tmp_path, shared_dir)
    node.start()
    faults_seen: set[str] = set()
    recorded: dict[str, str] = {}
    counts: list[int] = []
    try:
        for container in ("pod-a", "pod-a", "pod-b", "pod-b"):
            node.writer(container)
        node.recorder("seed", 20).wait(timeout=60)
        recorded |= json.loads(node.children[-1].stdout.read())
        injections = {
            1.0: lambda: (node.fifo(node.metrics / "counter_fifo.db"), node.fifo(node.metrics / "pod-a" / "counter_p.db")),
            2.0: lambda: ((node.metrics / "counter_rand.db").symlink_to("/dev/urandom"),
                          (node.metrics / "counter_link.db").symlink_to(node.writers[0][1])),  # double count if followed
            3.0: lambda: corrupt_in_place(node.writers[1][1]),
            4.0: lambda: os.truncate(node.writers[2][1], 4),  # the writer dies of SIGBUS at its next write
            5.0: lambda: os.kill(node.writers[3][0].pid, signal.SIGKILL),
            6.0: lambda: (node.writer("pod-c"), node.writer("pod-a")),  # restarts
            7.0: lambda: (node.metrics / "pod-b" / "counter_9-garbage0.db").write_bytes(os.urandom(3000)),
            8.0: lambda: (node.metrics / "counter_8-halfcopy.db").write_bytes(
                node.writers[0][1].read_bytes()[:40]),
        }
        recorders = [node.recorder("root-a", 25), node.recorder("root-b", 25)]
        begin, last_calls, done = time.monotonic(), 0.0, set()
        while (now := time.monotonic() - begin) < RUN_S:
            for at, inject in injections.items():
                if now >= at and at not in done:
                    inject()
                    done.add(at)
                    faults_seen.add(str(at))
            if now >= 3.0 and "unreadable" not in faults_seen:
                faults_seen.add("unreadable")
                for proc in recorders:  # the writers who could read it are done first
                    recorded |= json.loads(proc.stdout.read())
                counts.append(len(read_ledger(node.ledger).entries))
                refused = unreadable_ledger_recorder(node)
                assert set(refused.values()) == {"refused"}, refused
                counts.append(len(read_ledger(node.ledger).entries))
                recorders = [node.recorder("root-c", 15)]
            seconds, calls, files = scrape(node.url)
            assert seconds < SCRAPE_LIMIT_S
            assert calls >= last_calls, f"node total went down: {last_calls} -> {calls} ({files})"
            last_calls = calls
            time.sleep(0.1)
        for proc in recorders:
            recorded |= json.loads(proc.stdout.read())
        assert len(done) == len(injections) and files["not_regular"] == 4 and files["corrupt"] >= 3
        assert node.daemon.state.compacted_files >= 1  # the killed writers' files went to the archive
    finally:
        node.stop()
    final = {e.case for e in read_ledger(node.ledger).entries}
    missing = {case for case, outcome in recorded.items() if outcome == "recorded"} - final
    assert not missing and len(final) == 20 + 25 + 25 + 15
    assert counts == sorted(counts)  # the ledger never shrank


def unreadable_ledger_recorder(node: Node) -> dict[str, str]:
    """A user who cannot read the ledger tries to record: every attempt must be refused."""
    if ROOT:
        os.chmod(node.ledger, 0o600)  # as the old mkstemp writer left it
        proc = node.recorder("nobody", 10, nobody=True)
    else:
        os.chmod(node.ledger, 0)
        proc = node.recorder("unreadable", 10)
    try:
        return json.loads(proc.stdout.read())
    finally:
        proc.wait(timeout=30)
        os.chmod(node.ledger, 0o644)
