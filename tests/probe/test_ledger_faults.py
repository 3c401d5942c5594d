"""The vetting ledger under faults (issue 13): bytes that are not UTF-8, files other users wrote,
FIFOs and huge files. Nothing raises, nothing hangs, and nothing once recorded is lost.

Other users are simulated two ways. As root (these tests' usual case) a forked child drops to
uid/gid 65534 (`os.setuid`), exactly the DaemonSet's user; as any other user, `chmod 000` makes
the file unreadable to us, which is the same `EACCES` (root reads through any mode, so those
tests skip under root).
"""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from fa4doctor.names import BackendName
from fa4doctor.probe import ledger
from fa4doctor.probe.ledger import LedgerError, read_ledger, record
from fa4doctor.records import MAX_INPUT_BYTES
from ledger_helpers import flat_entry

NOBODY = 65534
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="acting as another uid needs root (os.setuid)")
needs_non_root = pytest.mark.skipif(ROOT, reason="root reads a file whatever its mode")


def entry(case: str, outcome: str = "pass"):
    return flat_entry(backend=BackendName.FA4, fingerprint="fp", case=case, dtype="bf16", head_dim_qk=128,
                      attn_mask_type="causal", window=False, direction="fwd", outcome=outcome)


def as_nobody(function, *args):
    """`function(*args)` in a forked child running as uid/gid 65534: its result, or the exception
    it raised (pickled back through a pipe)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result = ("ok", function(*args))
            except BaseException as exc:  # noqa: BLE001  handed back to the parent
                result = ("raised", exc)
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(result, out)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as incoming:
        data = incoming.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


@pytest.fixture
def shared_dir():
    """A directory every uid may write, as the node's /var/lib/fa4doctor is to its group
    (pytest's tmp_path lives under a 0700 directory that uid 65534 cannot enter)."""
    path = Path(tempfile.mkdtemp(prefix="fa4doctor-ledger-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def bounded(function, seconds: float = 5.0):
    """`function()` in a thread; fails the test instead of hanging it."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", function()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return box["result"]


def test_a_ledger_that_is_not_utf8_is_a_problem_not_an_exception(tmp_path):
    """Item 1: `read_ledger` promises never to raise; this raised UnicodeDecodeError."""
    path = tmp_path / "ledger.json"
    path.write_bytes(b"\xff\xfe{}")
    read = read_ledger(path)
    assert read.entries == () and "not UTF-8" in read.problem and str(path) in read.problem


def test_a_fifo_or_device_ledger_never_hangs_a_reader(tmp_path):
    fifo = tmp_path / "ledger.json"
    os.mkfifo(fifo)
    try:
        read = bounded(lambda: read_ledger(fifo))
    finally:
        try:  # unblock a reader stuck in open() (before the fix)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert read.entries == () and "not a regular file" in read.problem
    assert "not a regular file" in read_ledger("/dev/null").problem  # (/dev/zero would eat memory before the fix)


def test_a_ledger_over_the_size_cap_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "ledger.json"
    with open(path, "wb") as f:
        f.truncate(MAX_INPUT_BYTES + 1)  # sparse: costs no disk
    assert "larger than" in read_ledger(path).problem
    with pytest.raises(LedgerError):
        record([entry("a")], path)
    assert path.stat().st_size == MAX_INPUT_BYTES + 1


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe{}",
                                     b'{"schema": "fa4doctor.ledger", "schema_version": 99, "entries": []}'])
def test_a_writer_never_overwrites_a_ledger_it_could_not_read(tmp_path, content):
    """Item 2: a newer fa4doctor's ledger, or one a person can still repair, is never replaced."""
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    with pytest.raises(LedgerError, match="refusing to write"):
        record([entry("a")], path)
    assert path.read_bytes() == content and not list(tmp_path.glob("*.tmp"))


def test_a_rewrite_keeps_the_files_mode_and_group(tmp_path):
    path = tmp_path / "ledger.json"
    record([entry("a")], path)
    os.chmod(path, 0o640)
    if ROOT:
        os.chown(path, -1, 2000)  # the metrics group of deploy/kubernetes (supplementalGroups: [2000])
    group = path.stat().st_gid
    record([entry("b")], path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.stat().st_gid == group
    assert {e.case for e in read_ledger(path).entries} == {"a", "b"}


def test_a_new_ledger_is_created_like_any_file_not_0600(tmp_path):
    path = tmp_path / "ledger.json"
    record([entry("a")], path)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


@needs_root
def test_what_root_records_another_uid_can_read(shared_dir):
    """Item 2: mkstemp left the ledger 0600, so the daemon (uid 65534) read nothing."""
    path = shared_dir / "ledger.json"
    record([entry("a", "wrong_result")], path)
    kind, read = as_nobody(read_ledger, path)
    assert kind == "ok" and read.problem is None and [e.case for e in read.entries] == ["a"]


@needs_root
def test_an_unreadable_ledger_is_reported_and_never_replaced_by_another_uid(shared_dir):
    """Item 2: 400 entries became 50 when a uid that could not read the ledger recorded."""
    path = shared_dir / "ledger.json"
    record([entry(f"root-{i}") for i in range(400)], path)
    os.chmod(path, 0o600)
    before = path.read_bytes()
    kind, read = as_nobody(read_ledger, path)
    assert kind == "ok" and read.entries == () and "Permission denied" in read.problem
    kind, raised = as_nobody(record, [entry(f"nobody-{i}") for i in range(50)], path)
    assert kind == "raised" and isinstance(raised, LedgerError) and "refusing to write" in str(raised)
    assert path.read_bytes() == before and len(read_ledger(path).entries) == 400


@needs_non_root
def test_an_unreadable_ledger_is_reported_and_never_replaced_chmod(tmp_path):
    path = tmp_path / "ledger.json"
    record([entry(f"mine-{i}") for i in range(400)], path)
    os.chmod(path, 0)
    try:
        assert "Permission denied" in read_ledger(path).problem
        with pytest.raises(LedgerError, match="refusing to write"):
            record([entry("other")], path)
    finally:
        os.chmod(path, 0o644)
    assert len(read_ledger(path).entries) == 400


def test_the_finding_tells_how_to_repair_not_to_rewrite(tmp_path):
    """`check` reports the unreadable ledger as a finding; its fix no longer says smoke rewrites it."""
    from fa4doctor.probe.gather import gather_environment
    from fa4doctor.probe.nvml import FakeNvml

    path = tmp_path / "ledger.json"
    path.write_bytes(b"\xff\xfe{}")
    env = gather_environment(nvml=FakeNvml({"init_error": 12}), check_imports=False, environ={}, ledger_path=path)
    [finding] = [f for f in env.findings if f.code == "ledger_unreadable"]
    assert "not UTF-8" in finding.message and "rewrites" not in finding.fix
    assert ledger.read_ledger(path).problem == finding.message
