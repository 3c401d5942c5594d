"""The daemon under faults (issue 13): FIFOs, symlinks and damaged files in the metrics directory,
an unreadable ledger, a probe that keeps failing, many clients at once, HEAD requests."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fa4doctor.serve import compaction, multiproc, writer_files
from fa4doctor.serve.collector import Collector
from fa4doctor.serve.daemon import Daemon, ServeConfig
from fa4doctor.serve.file_format import read_file
from fa4doctor.serve.server import make_server
from fa4doctor.serve.state import UNREADY_AFTER_FAILURES, DaemonState
from tests.serve.helpers import age, check_report, printing, script, write_counters

CALLS_SDPA = ("fa4doctor_dispatch_calls_total", (("backend", "sdpa"),))


def totals(snap) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in snap.families for s in f.samples}


def bounded(function, seconds: float = 2.0):
    """`function()` in a thread; fails the test instead of hanging it (the issue's 2 s per scrape)."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", function()), daemon=True)
    begin = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    box["seconds"] = time.monotonic() - begin
    return box["result"]


def unblock(fifo: Path) -> None:
    """Free a reader stuck in open() on the FIFO (only before the fix)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.fixture
def fifo_dir(tmp_path):
    write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"sdpa": 3})
    (tmp_path / "pod").mkdir()
    fifos = [tmp_path / "counter_x.db", tmp_path / "pod" / "counter_y.db"]
    for fifo in fifos:
        os.mkfifo(fifo)
    yield tmp_path
    for fifo in fifos:
        unblock(fifo)


def test_a_fifo_in_the_metrics_dir_never_hangs_a_read(fifo_dir):
    """Item 3: `mkfifo $DIR/counter_x.db` hung /metrics forever."""
    reader = multiproc.CounterReader(fifo_dir)
    snap = bounded(lambda: reader.read(check_locks=True))
    assert totals(snap)[CALLS_SDPA] == 3 and snap.files["not_regular"] == 2
    assert not bounded(lambda: writer_files.writer_alive(fifo_dir / "counter_x.db"))
    reader.close()


def test_a_fifo_never_hangs_compaction(fifo_dir):
    for fifo in (fifo_dir / "counter_x.db", fifo_dir / "pod" / "counter_y.db"):
        os.utime(fifo, (time.time() - 3600, time.time() - 3600))
    age(fifo_dir / "counter_1-aaaaaaaa.db")
    done = bounded(lambda: compaction.compact(fifo_dir, grace_seconds=1))
    assert done.absorbed == 1 and done.error is None
    assert (fifo_dir / "counter_x.db").exists()  # never opened, never absorbed, never deleted
    assert totals(multiproc.read_dispatch_counters(fifo_dir))[CALLS_SDPA] == 3


def test_symlinks_are_never_followed(tmp_path):
    """Item 4: `counter_x.db -> /dev/urandom` made scrapes take 0.8-20 s."""
    write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"sdpa": 3})
    elsewhere = write_counters(tmp_path.parent / f"{tmp_path.name}-elsewhere.db", {"sdpa": 100})
    (tmp_path / "counter_x.db").symlink_to("/dev/urandom")
    (tmp_path / "counter_y.db").symlink_to(elsewhere)  # another directory's file: not ours to count
    reader = multiproc.CounterReader(tmp_path)
    for _ in range(3):
        snap = bounded(reader.read, seconds=1.0)
        assert totals(snap)[CALLS_SDPA] == 3 and snap.files["not_regular"] == 2
    assert "symlink" in str(pytest.raises(writer_files.NotRegularFile, read_file, tmp_path / "counter_x.db").value)
    reader.close()


def test_a_file_swapped_for_a_fifo_after_listing_is_skipped(tmp_path):
    """The type is checked again on the open fd (fstat), not only in the listing."""
    path = write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"sdpa": 3})
    reader = multiproc.CounterReader(tmp_path)
    listed = writer_files._entries(tmp_path)
    path.unlink()
    os.mkfifo(path)
    try:
        totals_now: dict = {}
        state, _ = bounded(lambda: reader._add(listed[0][0], listed[0][1], os.stat(path).st_ino, totals_now, set()))
        assert state == "not_regular" and totals_now == {}
    finally:
        unblock(path)
        reader.close()


def test_a_used_length_past_the_end_is_never_read_into_memory(tmp_path):
    """Item 4: what is read is capped by the file's real size, not by what its header claims."""
    path = tmp_path / "counter_1-aaaaaaaa.db"
    path.write_bytes((2**31 - 8).to_bytes(4, "little") + b"\0" * 8188)
    reader = multiproc.CounterReader(tmp_path)
    tracemalloc.start()
    try:
        snap = reader.read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        reader.close()
    assert snap.files["corrupt"] == 1 and peak < 64 * 2**20


def test_a_corrupted_live_file_never_makes_totals_go_down(tmp_path):
    """Item 5: node totals went 1400 -> 1200 -> 900 as live writers' files were damaged."""
    paths = [write_counters(tmp_path / f"counter_{i}-aaaaaaaa.db", {"sdpa": n})
             for i, n in enumerate((200, 300, 900))]
    reader = multiproc.CounterReader(tmp_path)
    assert totals(reader.read())[CALLS_SDPA] == 1400
    with open(paths[0], "r+b") as f:  # damaged in place: same inode
        f.seek(8)
        f.write(b"\xff" * 64)
    paths[1].write_bytes(b"\x00" * 4)  # truncated in place
    snap = reader.read()
    assert totals(snap)[CALLS_SDPA] == 1400 and snap.files["corrupt"] == 2 and snap.held == 2
    write_counters(paths[2], {"sdpa": 950})  # the healthy writer goes on counting
    assert totals(reader.read())[CALLS_SDPA] == 1450
    paths[0].unlink()  # an operator removes the damaged file: its counts were real
    snap = reader.read()
    assert totals(snap)[CALLS_SDPA] == 1450 and snap.held == 2
    registry = CollectorRegistry()
    registry.register(Collector(DaemonState, metrics_dir=str(tmp_path), renderers={}))
    assert registry.get_sample_value("fa4doctor_metrics_dir_files", {"state": "corrupt"}) == 1
    assert registry.get_sample_value("fa4doctor_metrics_dir_held_files") == 0  # a fresh reader knows no history
    reader.close()


def test_a_value_that_goes_down_in_place_is_held_at_its_last_good(tmp_path):
    path = write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"sdpa": 500})
    reader = multiproc.CounterReader(tmp_path)
    assert totals(reader.read())[CALLS_SDPA] == 500
    write_counters(path, {"sdpa": 7})  # a writer only adds: this is damage
    assert totals(reader.read())[CALLS_SDPA] == 500
    reader.close()


def make_daemon(tmp_path, probe, **config) -> Daemon:
    return Daemon(ServeConfig(probe_command=probe, smoke_level="off", **config), nvml_factory=lambda: None)


def test_readyz_turns_503_after_consecutive_failed_probe_cycles(tmp_path):
    """Item 10 (and item 1's serve symptom): 22 failed cycles in a row stayed ready."""
    good = printing(tmp_path, "good", check_report())
    bad = script(tmp_path, "bad", "import sys; sys.exit(1)")
    daemon = make_daemon(tmp_path, good)
    daemon.probe_once()
    daemon.config = ServeConfig(probe_command=bad, smoke_level="off")
    for cycle in range(1, UNREADY_AFTER_FAILURES + 2):
        daemon.probe_once()
        assert daemon.state.ready is (cycle < UNREADY_AFTER_FAILURES)
    server = make_server("127.0.0.1", 0, state=lambda: daemon.state, collector=None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        status, body = fetch(url + "/readyz")
        assert status == 503 and f"the last {UNREADY_AFTER_FAILURES + 1} probe cycles failed" in body
        daemon.config = ServeConfig(probe_command=good, smoke_level="off")
        daemon.probe_once()
        assert fetch(url + "/readyz")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_a_first_failed_cycle_is_still_ready_so_start_up_never_loops(tmp_path):
    daemon = make_daemon(tmp_path, script(tmp_path, "bad", "import sys; sys.exit(1)"))
    assert not daemon.state.ready
    daemon.probe_once()
    assert daemon.state.ready and not daemon.state.probe_up


def test_an_unreadable_ledger_is_a_metric_and_one_log_line(tmp_path, capsys):
    """Item 2: the daemon read "no entries" and said nothing."""
    ledger = tmp_path / "ledger.json"
    ledger.write_bytes(b"\xff\xfe{}")
    daemon = make_daemon(tmp_path, printing(tmp_path, "good", check_report()), ledger=str(ledger))
    registry = CollectorRegistry()
    registry.register(Collector(lambda: daemon.state, renderers={}))
    for _ in range(2):
        daemon.probe_once()
        assert registry.get_sample_value("fa4doctor_ledger_readable") == 0
    assert capsys.readouterr().err.count("not UTF-8") == 1
    ledger.unlink()
    daemon.probe_once()
    assert registry.get_sample_value("fa4doctor_ledger_readable") == 1


def fetch(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def served(tmp_path):
    write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"sdpa": 3})
    state = DaemonState(ready=True, check=check_report(), probe_up=True, probe_cycles=1)
    collector = Collector(lambda: state, metrics_dir=str(tmp_path), renderers={})
    server = make_server("127.0.0.1", 0, state=lambda: state, collector=collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("route", ["/", "/metrics", "/healthz", "/readyz", "/report.json", "/nope"])
def test_head_answers_every_route_like_get_without_a_body(served, route):
    """Item 9: HEAD was 501 everywhere, /healthz included."""
    request = urllib.request.Request(served + route, method="HEAD")
    try:
        response = urllib.request.urlopen(request, timeout=5)
    except urllib.error.HTTPError as error:
        response = error
    get_status, get_body = fetch(served + route)
    assert response.status == get_status and response.read() == b""
    if route != "/metrics":  # its text is rendered per request
        assert int(response.headers["Content-Length"]) == len(get_body.encode())


def test_a_metrics_body_says_what_is_skipped(served, tmp_path):
    os.mkfifo(tmp_path / "counter_x.db")
    try:
        status, body = bounded(lambda: fetch(served + "/metrics"))
    finally:
        unblock(tmp_path / "counter_x.db")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    files = {s.labels["state"]: s.value for s in families["fa4doctor_metrics_dir_files"].samples}
    assert status == 200 and files["not_regular"] == 1 and "fa4doctor_metrics_dir_held_files" in families


def test_sixty_clients_connecting_at_once_are_all_accepted(tmp_path):
    """Item 9: socketserver's backlog of 5 left all but 6 of 60 simultaneous connects waiting for
    a SYN retransmit (1 s and more). Nothing accepts here, so only the backlog admits them."""
    server = make_server("127.0.0.1", 0, state=DaemonState, collector=None)
    clients = []
    try:
        for _ in range(60):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(server.server_address)
            clients.append(client)
        connected, deadline = set(), time.monotonic() + 0.5
        while time.monotonic() < deadline and len(connected) < len(clients):
            _, ready, _ = select.select([], [c for c in clients if c not in connected], [], 0.05)
            connected |= {c for c in ready if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0}
        assert len(connected) == 60
    finally:
        for client in clients:
            client.close()
        server.server_close()
