"""Scrape cost that does not grow with dead writers' files (issue 14): settled files are counted from
memory, directories are listed again only when they change, compaction never holds the scrape lock
for long, and a long-lived reader always agrees with a full re-read."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fa4doctor.serve import compaction, multiproc, writer_files
from fa4doctor.serve.daemon import Daemon, ServeConfig
from tests.serve.helpers import age, check_report, printing, script, write_counters

CALLS_SDPA = ("fa4doctor_dispatch_calls_total", (("backend", "sdpa"),))


def totals(snap) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in snap.families for s in f.samples}


def lock(path: Path) -> int:
    """Hold LOCK_SH on `path` as its live writer does (one lock per open file description)."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


class Reads:
    """Counts the counter-file reads a `CounterReader` makes."""

    def __init__(self, monkeypatch):
        self.paths: list[str] = []
        real_fd, real_file = multiproc.read_fd, multiproc.read_file
        monkeypatch.setattr(multiproc, "read_fd", lambda fd: (self.paths.append(f"fd{fd}"), real_fd(fd))[1])
        monkeypatch.setattr(multiproc, "read_file", lambda path: (self.paths.append(str(path)), real_file(path))[1])


def test_settled_files_are_never_read_again_and_live_ones_are_read_every_scrape(tmp_path, monkeypatch):
    for i in range(4):
        (tmp_path / f"pod-{i}").mkdir()
    for i in range(40):
        write_counters(tmp_path / f"pod-{i % 4}" / f"counter_{i}-dead0000.db", {"sdpa": 1})
    live = [write_counters(tmp_path / f"counter_9{i}-live0000.db", {"sdpa": 100}) for i in range(2)]
    fds = [lock(path) for path in live]
    reader = multiproc.CounterReader(tmp_path)
    try:
        assert totals(reader.read())[CALLS_SDPA] == 240
        assert reader.settle(grace_seconds=0) == 40  # the live two hold their locks
        assert totals(reader.read())[CALLS_SDPA] == 240  # the last read of the dead ones
        reads = Reads(monkeypatch)
        write_counters(live[0], {"sdpa": 150})  # a live writer counts on, in place
        snap = reader.read()
        assert totals(snap)[CALLS_SDPA] == 290 and len(reads.paths) == 2
        assert snap.files["writer"] == 42
        assert totals(snap) == totals(multiproc.read_dispatch_counters(tmp_path))
    finally:
        for fd in fds:
            os.close(fd)
        reader.close()


def test_a_settled_file_that_changes_on_disk_is_read_again(tmp_path):
    path = write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"sdpa": 5})
    reader = multiproc.CounterReader(tmp_path)
    reader.read()
    reader.settle(grace_seconds=0)
    reader.read()
    assert path in {Path(p) for p in reader._settled}
    write_counters(path, {"sdpa": 9})  # through the mmap: st_mtime may not move ...
    data = path.read_bytes()
    path.write_bytes(data)  # ... a write() does (as any rewrite of a dead file would)
    reader.settle(grace_seconds=0)
    assert not reader._settled and totals(reader.read())[CALLS_SDPA] == 9
    reader.close()


def test_directories_are_listed_again_only_when_they_change(tmp_path, monkeypatch):
    (tmp_path / "pod").mkdir()
    write_counters(tmp_path / "pod" / "counter_1-aaaaaaaa.db", {"sdpa": 1})
    time.sleep(1.1)  # quiet for QUIET_NS: a cached listing can be trusted from now on
    reader = multiproc.CounterReader(tmp_path)
    scans = []
    real = os.scandir
    monkeypatch.setattr(writer_files.os, "scandir", lambda path: (scans.append(str(path)), real(path))[1])
    reader.read()
    assert len(scans) == 2
    reader.read()
    assert len(scans) == 2  # two stats, no listing
    write_counters(tmp_path / "pod" / "counter_2-bbbbbbbb.db", {"sdpa": 2})
    assert totals(reader.read())[CALLS_SDPA] == 3 and scans[-1] == str(tmp_path / "pod")
    reader.close()


def test_compaction_never_holds_the_scrape_lock_while_it_reads(tmp_path, monkeypatch):
    """A compaction that takes a second (20 files at 50 ms each) never delays a scrape: it holds
    the scrape lock only to swap the archive in. Totals stay exact throughout."""
    for i in range(20):
        age(write_counters(tmp_path / f"counter_{i}-dead0000.db", {"sdpa": 2}))
    slow = compaction._our_counts

    def slow_counts(path, keys):
        time.sleep(0.05)
        return slow(path, keys)

    monkeypatch.setattr(compaction, "_our_counts", slow_counts)
    scrape_lock = threading.Lock()
    reader = multiproc.CounterReader(tmp_path)
    done: dict = {}
    worker = threading.Thread(target=lambda: done.setdefault(
        "result", compaction.compact(tmp_path, grace_seconds=1, lock=scrape_lock, batch=8)))
    begin = time.monotonic()
    worker.start()
    slowest, seen = 0.0, set()
    while worker.is_alive():
        started = time.monotonic()
        with scrape_lock:
            snap = reader.read()
        slowest = max(slowest, time.monotonic() - started)
        seen.add(totals(snap)[CALLS_SDPA])
        time.sleep(0.005)
    worker.join()
    assert done["result"].absorbed == 20 and time.monotonic() - begin > 0.9
    assert slowest < 0.2 and seen == {40.0}, (slowest, seen)
    assert totals(reader.read())[CALLS_SDPA] == 40
    reader.close()


def test_the_daemon_compacts_while_a_probe_child_runs(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    age(write_counters(metrics / "counter_1-dead0000.db", {"sdpa": 3}))
    slow_probe = script(tmp_path, "slow", "import time; time.sleep(30)")
    daemon = Daemon(ServeConfig(probe_command=slow_probe, smoke_level="off", metrics_dir=str(metrics),
                                compact_interval=0.2, compact_grace=1.0, settle_interval=0.2, probe_timeout=60),
                    nvml_factory=lambda: None)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while daemon.state.compacted_files < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.state.compacted_files == 1 and daemon.state.probe_cycles == 0  # the probe still runs
    finally:
        daemon.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()


# One step of a node's life: (what, which file, a value). Files are counter_<n>-...db in two pods.
STEPS = st.lists(st.tuples(st.sampled_from(["write", "count", "die", "settle", "compact", "remove", "replace",
                                            "read"]),
                           st.integers(0, 7), st.integers(0, 1000)), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_a_long_lived_reader_agrees_with_a_full_re_read_at_every_step(tmp_path_factory, steps):
    """Counters are exact against a full re-read (a fresh reader) whatever happens between
    scrapes: writers start, count, die and are settled, compacted, removed or replaced."""
    root = tmp_path_factory.mktemp("node")
    (root / "pod-a").mkdir()
    (root / "pod-b").mkdir()
    reader, locks, values, files = multiproc.CounterReader(root), {}, {}, {}

    def path(n: int, new: bool = False) -> Path:
        if new or n not in files:  # a new process: a new name (the writer's 8 random hex digits)
            files[n] = root / ("pod-a" if n % 2 else "pod-b") / f"counter_{n}-{len(values) + len(files):08x}.db"
        return files[n]

    try:
        for what, n, value in steps:
            file = path(n)
            if what == "write" and not file.exists():
                file = path(n, new=True)
                file.parent.mkdir(exist_ok=True)  # compaction removes empty pod directories
                values[n] = value
                write_counters(file, {"sdpa": value}, {("fa4", "sdpa", "not_installed"): n})
                locks[n] = lock(file)
            elif what == "count" and n in locks:  # only a live writer counts, and only up
                values[n] += value
                write_counters(file, {"sdpa": values[n], "fa2": n})
            elif what == "die" and n in locks:
                os.close(locks.pop(n))
            elif what == "settle":
                reader.settle(grace_seconds=0)
            elif what == "compact":
                compaction.compact(root, grace_seconds=0)
            elif what == "remove" and file.exists() and n not in locks:
                file.unlink()
            elif what == "replace" and file.exists() and n not in locks:  # same name, new inode
                file.unlink()
                write_counters(file, {"sdpa": value})
            assert totals(reader.read()) == totals(multiproc.read_dispatch_counters(root)), (what, n)
    finally:
        for fd in locks.values():
            os.close(fd)
        reader.close()
