"""The counter file format is fa4doctor's own (runtime/counter_file.py), and still prometheus-client's:
these tests fail when either side changes it (issue 14: the exporter used to import the library's
private `prometheus_client.mmap_dict` under an open-ended version range)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fa4doctor.runtime.counter_file import INITIAL_SIZE, CounterFile, counter_key
from fa4doctor.serve.file_format import parse_values

KEY = counter_key("fa4doctor_dispatch_calls", "fa4doctor_dispatch_calls_total", ["backend"], ["fa4"], "h")
# The format, pinned: used length 120, padding, then one entry (key length 87, the key and 5 spaces
# to 8-byte alignment, value 7.0, timestamp 1.5), little-endian as on every supported platform.
GOLDEN = (bytes.fromhex("78000000" "00000000" "57000000") + KEY.encode() + b"     "
          + bytes.fromhex("0000000000001c40" "000000000000f83f"))


def writes(n: int = 3000) -> list[tuple[str, float, float]]:
    """Keys of every length mod 8, some written twice, enough to grow the file past 64 KiB."""
    keys = [counter_key("f", "f_total", ["k"], ["v" * (i % 50) + str(i)], "help") for i in range(n)]
    return [(key, float(i), i / 4) for i, key in enumerate(keys)] + [(keys[7], 99.0, 1.0)]


def write(writer, path: Path, values) -> bytes:
    out = writer(str(path))
    for key, value, timestamp in values:
        out.write_value(key, value, timestamp)
    out.close()
    return path.read_bytes()


def test_the_format_is_pinned(tmp_path):
    data = write(CounterFile, tmp_path / "counter_1-aaaaaaaa.db", [(KEY, 7.0, 1.5)])
    assert len(data) == INITIAL_SIZE and data[:len(GOLDEN)] == GOLDEN and not any(data[len(GOLDEN):])
    assert parse_values(data) == [(KEY, 7.0)]


def test_prometheus_client_writes_the_same_bytes(tmp_path):
    """Fails when the installed prometheus-client changes its multiprocess format (or moves it):
    then its MultiProcessCollector no longer reads fa4doctor's files, nor the daemon its files."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    assert mmap_key("f", "f_total", ["b", "a"], ["1", "2"], "h") == counter_key("f", "f_total", ["b", "a"], ["1", "2"], "h")
    ours = write(CounterFile, tmp_path / "ours.db", writes())
    theirs = write(MmapedDict, tmp_path / "theirs.db", writes())
    assert len(ours) > INITIAL_SIZE and ours == theirs
    read_back = [(k, v, t) for k, v, t, _pos in MmapedDict.read_all_values_from_file(str(tmp_path / "ours.db"))]
    assert read_back[:3] == writes()[:3] and read_back[7][1] == 99.0


@pytest.mark.parametrize("first", [CounterFile, "prometheus_client"])
def test_a_reopened_file_keeps_its_keys(tmp_path, first):
    """A writer that opens an existing file (the same pid again) updates its keys in place."""
    if first == "prometheus_client":
        from prometheus_client.mmap_dict import MmapedDict as first
    path = tmp_path / "counter_1-aaaaaaaa.db"
    write(first, path, [(KEY, 1.0, 0.0)])
    write(CounterFile, path, [(KEY, 5.0, 0.0), ("other", 2.0, 0.0)])
    assert parse_values(path.read_bytes()) == [(KEY, 5.0), ("other", 2.0)]


def test_the_dispatcher_and_the_daemon_no_longer_import_the_private_module():
    root = Path(__file__).resolve().parents[2] / "fa4doctor"
    imports = re.compile(r"^\s*(from|import) prometheus_client\.mmap_dict", re.MULTILINE)
    assert [p.relative_to(root) for p in root.rglob("*.py") if imports.search(p.read_text())] == []
