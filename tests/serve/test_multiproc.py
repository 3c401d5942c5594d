"""Summing and compacting the dispatch counters that training processes leave in the directory."""

from __future__ import annotations

import json
import os

import pytest
from prometheus_client import CollectorRegistry

from fa4doctor.runtime.counter_file import CounterFile
from fa4doctor.runtime.counters import CALLS
from fa4doctor.serve import compaction, multiproc
from fa4doctor.serve.families import ABSORBED
from fa4doctor.serve.file_format import parse_values
from fa4doctor.serve.writer_files import ARCHIVE_NAME
from tests.serve.helpers import LiveWriter, age, write_counters

FB = ("fa4", "sdpa", "not_installed")


def totals(root) -> dict:
    snap = multiproc.read_dispatch_counters(root)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in snap.families for s in f.samples}


def calls(root, backend="sdpa") -> float:
    return totals(root).get(("fa4doctor_dispatch_calls_total", (("backend", backend),)), 0.0)


def fallbacks(root) -> float:
    key = ("fa4doctor_dispatch_fallbacks_total",
           (("preferred", "fa4"), ("reason", "not_installed"), ("selected", "sdpa")))
    return totals(root).get(key, 0.0)


def test_sums_every_writer_including_per_container_subdirectories(tmp_path):
    write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"sdpa": 3}, {FB: 3})
    (tmp_path / "pod-a").mkdir()
    (tmp_path / "pod-b" / "deeper").mkdir(parents=True)
    write_counters(tmp_path / "pod-a" / "counter_1-bbbbbbbb.db", {"sdpa": 4, "fa4": 1}, {FB: 4})
    write_counters(tmp_path / "pod-b" / "deeper" / "counter_1-cccccccc.db", {"sdpa": 100})  # too deep
    assert calls(tmp_path) == 7 and calls(tmp_path, "fa4") == 1 and fallbacks(tmp_path) == 7


def test_empty_or_missing_directory_still_exports_every_family(tmp_path):
    for root in (tmp_path, tmp_path / "missing"):
        names = [f.name for f in multiproc.read_dispatch_counters(root).families]
        assert names == ["fa4doctor_dispatch_calls", "fa4doctor_dispatch_fallbacks", "fa4doctor_unvetted_calls"]


def test_corrupt_and_foreign_files_are_skipped_and_counted(tmp_path):
    write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"sdpa": 2}, {FB: 2})
    (tmp_path / "counter_2-garbage0.db").write_bytes(os.urandom(5000))
    (tmp_path / "counter_3-truncate.db").write_bytes(b"\xff\xff\x00\x00" + b"\x00" * 60)
    (tmp_path / "counter_4-empty000.db").write_bytes(b"")
    write_counters(tmp_path / "gauge_all_5.db", {"sdpa": 50})  # another metric type: not ours
    (tmp_path / "notes.txt").write_text("hello")
    write_counters(tmp_path / "counter_6-foreign0.db",
                   extra=[("user_requests", "user_requests_total", {"path": "/x"}, 9.0)])
    write_counters(tmp_path / "counter_7-badlabel.db",  # label values outside the closed enums
                   extra=[(CALLS, CALLS + "_total", {"backend": "evil"}, 9.0),
                          (CALLS, CALLS + "_total", {"backend": "sdpa", "pid": "7"}, 9.0)])
    snap = multiproc.read_dispatch_counters(tmp_path)
    assert calls(tmp_path) == 2 and fallbacks(tmp_path) == 2
    assert snap.files["corrupt"] >= 2 and snap.files["ignored"] >= 3
    assert snap.samples_dropped == 3
    values = {s.labels.get("backend") for f in snap.families for s in f.samples}
    assert "evil" not in values


def test_compaction_merges_dead_writers_keeps_live_ones_and_totals(tmp_path):
    dead = [age(write_counters(tmp_path / f"counter_{i}-dead000{i}.db", {"sdpa": i}, {FB: i}))
            for i in (1, 2)]
    (tmp_path / "pod-x").mkdir()
    dead.append(age(write_counters(tmp_path / "pod-x" / "counter_1-deadpod0.db", {"sdpa": 10})))
    live_path = age(write_counters(tmp_path / "counter_9-live0000.db", {"sdpa": 5}, {FB: 5}))
    young = write_counters(tmp_path / "counter_8-young000.db", {"sdpa": 7})  # unlocked but new
    writer = LiveWriter(live_path)
    try:
        before = (calls(tmp_path), fallbacks(tmp_path))
        assert multiproc.read_dispatch_counters(tmp_path, check_locks=True).files["dead"] == 4
        done = compaction.compact(tmp_path, grace_seconds=60)
        assert done.absorbed == 3 and done.error is None
        assert not any(p.exists() for p in dead) and live_path.exists() and young.exists()
        assert (tmp_path / ARCHIVE_NAME).exists()
        assert (calls(tmp_path), fallbacks(tmp_path)) == before == (25.0, 8.0)
        # a second compaction (the archive itself never re-absorbed) changes nothing
        compaction.compact(tmp_path, grace_seconds=60)
        assert (calls(tmp_path), fallbacks(tmp_path)) == before
    finally:
        writer.stop()
    # the live writer exits: its file is compacted in turn, totals still monotonic
    age(live_path)
    age(young)
    assert compaction.compact(tmp_path, grace_seconds=60).absorbed == 2
    assert (calls(tmp_path), fallbacks(tmp_path)) == (25.0, 8.0)
    assert sorted(p.name for p in tmp_path.rglob("*.db")) == [ARCHIVE_NAME]


def test_restarted_writer_keeps_the_counter_monotonic(tmp_path):
    age(write_counters(tmp_path / "counter_1-run00001.db", {"sdpa": 10}))
    compaction.compact(tmp_path, grace_seconds=1)
    write_counters(tmp_path / "counter_1-run00002.db", {"sdpa": 1})  # same pid, new process
    assert calls(tmp_path) == 11


def test_crash_between_archive_and_unlink_never_double_counts(tmp_path, monkeypatch):
    path = age(write_counters(tmp_path / "counter_1-crash000.db", {"sdpa": 4}))
    monkeypatch.setattr(compaction, "_unlink", lambda p: False)  # the daemon dies before unlinking
    compaction.compact(tmp_path, grace_seconds=1)
    assert path.exists() and calls(tmp_path) == 4  # the archive lists it: readers skip it
    monkeypatch.undo()
    compaction.compact(tmp_path, grace_seconds=1)  # the next daemon cleans it up
    assert not path.exists() and calls(tmp_path) == 4


def test_empty_container_directories_are_removed_after_the_grace_period(tmp_path):
    (tmp_path / "gone").mkdir()
    age(tmp_path / "gone")
    (tmp_path / "fresh").mkdir()
    assert compaction.compact(tmp_path, grace_seconds=60).removed_dirs == 1
    assert not (tmp_path / "gone").exists() and (tmp_path / "fresh").exists()


def test_unwritable_directory_reports_an_error_instead_of_raising(tmp_path, monkeypatch):
    age(write_counters(tmp_path / "counter_1-ro000000.db", {"sdpa": 1}))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(compaction, "_write_archive", refuse)
    done = compaction.compact(tmp_path, grace_seconds=1)
    assert done.absorbed == 0 and "PermissionError" in done.error and calls(tmp_path) == 1


@pytest.mark.parametrize("family_name", ["fa4doctor_dispatch_calls", "fa4doctor_dispatch_calls_total"])
def test_writer_may_name_the_family_with_or_without_total(tmp_path, family_name):
    write_counters(tmp_path / "counter_1-aaaaaaaa.db",
                   extra=[(family_name, CALLS + "_total", {"backend": "fa2"}, 3.0)])
    assert calls(tmp_path, "fa2") == 3


def test_families_register_on_a_fresh_registry(tmp_path):
    write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"sdpa": 2}, {FB: 1})

    class Source:
        def collect(self):
            return multiproc.read_dispatch_counters(tmp_path).families

    registry = CollectorRegistry()
    registry.register(Source())
    assert registry.get_sample_value("fa4doctor_dispatch_fallbacks_total",
                                     dict(zip(("preferred", "selected", "reason"), FB))) == 1


def test_parse_values_agrees_with_prometheus_clients_reader(tmp_path):
    from prometheus_client.mmap_dict import MmapedDict

    path = tmp_path / "counter_1-aaaaaaaa.db"
    out = MmapedDict(str(path))
    for i in range(3000):  # keys of every length mod 8, and enough to grow past one page
        out.write_value("k" * (i % 50) + str(i), float(i) * 0.5, 0.0)
    out.close()
    expected = [(k, v) for k, v, _t, _p in MmapedDict.read_all_values_from_file(str(path))]
    assert parse_values(path.read_bytes()) == expected and len(expected) == 3000


def test_a_long_lived_reader_sees_in_place_updates_replacements_and_removals(tmp_path):
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    reader = multiproc.CounterReader(tmp_path)
    path = tmp_path / "counter_1-aaaaaaaa.db"
    live = MmapedDict(str(path))
    key = mmap_key(CALLS, CALLS + "_total", ["backend"], ["sdpa"], "calls")

    def value():
        family = reader.read().families[0]
        return sum(s.value for s in family.samples)

    try:
        for n in (1.0, 2.0, 7.0):  # the writer updates its mmap in place, as the dispatcher does
            live.write_value(key, n, 0.0)
            assert value() == n
    finally:
        live.close()
    path.unlink()
    write_counters(path, {"sdpa": 40})  # same name, new file (new inode)
    assert value() == 40
    path.unlink()
    assert value() == 0 and reader._fds == {}
    reader.close()


def test_files_that_cannot_be_deleted_are_never_counted_twice(tmp_path, monkeypatch):
    first = age(write_counters(tmp_path / "counter_1-keep0000.db", {"sdpa": 4}))
    monkeypatch.setattr(compaction, "_unlink", lambda p: False)  # e.g. no write permission
    compaction.compact(tmp_path, grace_seconds=1)
    age(write_counters(tmp_path / "counter_2-next0000.db", {"sdpa": 1}))
    compaction.compact(tmp_path, grace_seconds=1)  # must not absorb `first` a second time
    compaction.compact(tmp_path, grace_seconds=1)
    assert first.exists() and calls(tmp_path) == 5


def test_an_archive_never_makes_the_daemon_delete_other_files(tmp_path):
    victim = tmp_path.parent / f"{tmp_path.name}-victim.txt"
    victim.write_text("precious")
    out = CounterFile(str(tmp_path / ARCHIVE_NAME))
    for rel in (f"../{victim.name}", "/etc/passwd", "a/b/counter_1.db", "notes.txt"):
        out.write_value(json.dumps([ABSORBED, rel, {}, ""]), 1.0, 0.0)
    out.close()
    compaction.compact(tmp_path, grace_seconds=1)
    assert victim.read_text() == "precious"


def snapshot_values(snap) -> tuple:
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in snap.families for s in f.samples}
    return samples, snap.files, snap.samples_dropped


def test_a_long_lived_reader_always_agrees_with_a_fresh_read(tmp_path):
    """The reader decodes an unchanged file with a cached layout; any other change re-parses it.
    Where a file is damaged, the long-lived reader keeps its last good values (issue 13), which a
    fresh read cannot know."""
    reader = multiproc.CounterReader(tmp_path)
    path = write_counters(tmp_path / "counter_1-aaaaaaaa.db", {"sdpa": 1})
    other = write_counters(tmp_path / "counter_2-bbbbbbbb.db", {"fa4": 2}, {FB: 1})

    def same() -> bool:
        return snapshot_values(reader.read()) == snapshot_values(multiproc.read_dispatch_counters(tmp_path))

    assert same()
    write_counters(path, {"sdpa": 5})  # a value updated in place
    assert same() and calls(tmp_path) == 5
    write_counters(path, {"fa2": 1}, {FB: 2})  # keys appended: the used length grows
    assert same() and fallbacks(tmp_path) == 3
    data = bytearray(other.read_bytes())
    key_at = data.index(b"fa4doctor_dispatch_calls")
    data[key_at:key_at + 9] = b"somebody_"  # the same length, a foreign key now: damage
    other.write_bytes(bytes(data))
    snap = reader.read()
    assert snap.samples_dropped == 1 and calls(tmp_path, "fa4") == 0
    assert snapshot_values(snap)[0][("fa4doctor_dispatch_calls_total", (("backend", "fa4"),))] == 2  # kept
    data[key_at + 1] = 0xFF  # not UTF-8: the whole file is corrupt
    other.write_bytes(bytes(data))
    snap = reader.read()
    assert snap.files["corrupt"] == 1 and snap.held == 1 and calls(tmp_path, "fa4") == 0
    assert snapshot_values(snap)[0][("fa4doctor_dispatch_calls_total", (("backend", "fa4"),))] == 2
    reader.close()


def test_a_key_repeated_in_one_file_is_summed_as_merge_sums_it(tmp_path):
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    key = mmap_key(CALLS, CALLS + "_total", ["backend"], ["sdpa"], "calls")
    out = MmapedDict(str(tmp_path / "counter_1-aaaaaaaa.db"))
    out.write_value(key, 1.5, 0.0)
    out.write_value(key.replace('"calls"', '"other help"'), 2.0, 0.0)  # same series, another key
    out.close()
    reader = multiproc.CounterReader(tmp_path)
    first, again = (sum(s.value for s in reader.read().families[0].samples) for _ in range(2))
    assert calls(tmp_path) == first == again == 3.5  # again: from the cached layout
    reader.close()
