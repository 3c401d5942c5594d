"""The dispatch counters' file format, owned here rather than taken from prometheus-client's private
`prometheus_client.mmap_dict` (issue 14).

It is prometheus-client's multiprocess format, byte for byte (`MmapedDict` in
prometheus_client/mmap_dict.py, as of 0.26.0): a native 4-byte int, the bytes used; 4 bytes of
padding; then one entry per key: a 4-byte int, the key's length; the UTF-8 key, padded with
spaces to 8-byte alignment (`8 - (length + 4) % 8` bytes, never none); the value and a timestamp,
two doubles. The file starts at 64 KiB and doubles as it fills. A key is
`json.dumps([family, sample name, labels, help], sort_keys=True)` (its `mmap_key`).

Why owned: the writer runs inside every training process, under whatever prometheus-client that
image installed, and a private module may move or change in any release, which would break the
import of `attention()` or make the daemon misread the files. The daemon parses the files itself
(`fa4doctor/serve/file_format.py`); `tests/runtime/test_counter_file.py` writes the same values with
the installed prometheus-client and compares the bytes, so a change on its side fails that test
(and only then would the files stop being readable by its `MultiProcessCollector`, which reads
them where `PROMETHEUS_MULTIPROC_DIR` is the metrics directory).

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "counter_1-00000000.db")
>>> out = CounterFile(path); out.write_value(counter_key("c", "c_total", ["a"], ["b"], "h"), 2.0, 0.0); out.close()
>>> os.path.getsize(path), int.from_bytes(open(path, "rb").read(4), "little")
(65536, 64)
"""

from __future__ import annotations

import json
import mmap
import os
import struct

INITIAL_SIZE = 1 << 16
_INT = struct.Struct("i")
_TWO_DOUBLES = struct.Struct("dd")


def counter_key(family: str, name: str, labelnames: list[str], labelvalues: list[str], help_text: str) -> str:
    """The key of one sample: family, sample name, labels and help, as JSON with sorted keys."""
    return json.dumps([family, name, dict(zip(labelnames, labelvalues)), help_text], sort_keys=True)


def entry(key: str) -> bytes:
    """A new key's entry: its length, the key padded to 8-byte alignment, value and timestamp 0."""
    encoded = key.encode("utf-8")
    padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
    return _INT.pack(len(encoded)) + padded + _TWO_DOUBLES.pack(0.0, 0.0)


class CounterFile:
    """One process's counter file: keys are appended once, values are updated in place.

    Not thread-safe (callers serialise writes, as `runtime/counters.py` does).
    """

    def __init__(self, path: str | os.PathLike):
        self._f = open(path, "a+b")
        capacity = os.fstat(self._f.fileno()).st_size
        if capacity == 0:
            self._f.truncate(INITIAL_SIZE)
            capacity = INITIAL_SIZE
        self._capacity = capacity
        self._m = mmap.mmap(self._f.fileno(), capacity)
        self._positions: dict[str, int] = {}
        self._used = _INT.unpack_from(self._m, 0)[0]
        if self._used == 0:
            self._used = 8
            self._m[0:4] = _INT.pack(8)
        else:  # an existing file: find its keys' values
            pos = 8
            while pos < self._used:
                length = _INT.unpack_from(self._m, pos)[0]
                if length < 0 or pos + 4 + length > self._used:
                    raise ValueError(f"{path}: corrupt counter file")
                key = self._m[pos + 4:pos + 4 + length].decode("utf-8")
                pos += 4 + length + (8 - (length + 4) % 8)
                self._positions[key] = pos
                pos += 16

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        pos = self._positions.get(key)
        if pos is None:
            pos = self._append(key)
        # One slice assignment: a reader never sees the value half written or zeroed (the reason
        # prometheus-client gives for not using struct.pack_into on the mmap).
        self._m[pos:pos + 16] = _TWO_DOUBLES.pack(value, timestamp)

    def _append(self, key: str) -> int:
        data = entry(key)
        while self._used + len(data) > self._capacity:
            self._capacity *= 2
            self._f.truncate(self._capacity)
            self._m = mmap.mmap(self._f.fileno(), self._capacity)
        self._m[self._used:self._used + len(data)] = data
        self._used += len(data)
        self._m[0:4] = _INT.pack(self._used)  # only now is the entry visible to readers
        self._positions[key] = self._used - 16
        return self._used - 16

    def close(self) -> None:
        if self._f is not None:
            self._m.close()
            self._f.close()
            self._f = None
