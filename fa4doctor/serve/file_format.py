"""A counter file's bytes: read no further than the file holds, parsed, and decoded fast.

The format is prometheus-client's multiprocess mmap format, written by
fa4doctor/runtime/counter_file.py: a 4-byte used length, 4 bytes padding, then entries of a 4-byte
key length, the UTF-8 key padded to 8-byte alignment, a double value and a double timestamp. A
key is `[family, sample name, labels, help]` as JSON. Whatever a file claims is checked against
what it holds: reading or parsing a corrupt, truncated or half-created file raises one of
`UNREADABLE`, which readers count, never pass on.

>>> import os, tempfile
>>> from fa4doctor.runtime.counter_file import CounterFile
>>> path = os.path.join(tempfile.mkdtemp(), "counter_1-00000000.db")
>>> out = CounterFile(path); out.write_value("k", 2.0, 0.0); out.close()
>>> parse_values(read_file(path))
[('k', 2.0)]
"""

from __future__ import annotations

import json
import mmap
import operator
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fa4doctor.serve.families import ABSORBED, wanted
from fa4doctor.serve.writer_files import open_regular

# What reading a corrupt, truncated or half-created file can raise.
UNREADABLE = (OSError, ValueError, RuntimeError, UnicodeDecodeError, TypeError, struct.error)
_INT = struct.Struct("i")
_DOUBLE = struct.Struct("d")


def read_file(path: str | os.PathLike) -> bytes:
    """The used bytes of one counter file, opened with `open_regular`."""
    fd = open_regular(path)
    try:
        return read_fd(fd)
    finally:
        os.close(fd)


def read_fd(fd: int) -> bytes:
    """The used bytes of an open counter file: never more than the file holds, whatever its
    header claims (a huge used length would otherwise size the read buffer)."""
    data = os.pread(fd, mmap.PAGESIZE, 0)
    used = _INT.unpack_from(data, 0)[0]
    if used > len(data):
        if used > os.fstat(fd).st_size:
            raise ValueError(f"file says {used} bytes are used but is shorter")
        data += os.pread(fd, used - len(data), len(data))
    return data


def read_values(path: Path) -> list[tuple[str, str, dict, float]]:
    """(family, sample name, labels, value) of one file; raises on anything malformed."""
    rows = []
    for key, value in parse_values(read_file(path)):
        family, name, labels, _help = json.loads(key)
        if not (isinstance(family, str) and isinstance(name, str) and isinstance(labels, dict)):
            raise ValueError(f"{path}: malformed key {key!r}")
        rows.append((family, name, labels, float(value)))
    return rows


def _positions(data: bytes) -> list[tuple[int, int, int]]:
    """(key offset, key length, value offset) of each entry; raises on a used length or an entry
    that runs past the data."""
    used = _INT.unpack_from(data, 0)[0]
    if used > len(data):
        raise ValueError(f"file says {used} bytes are used but holds {len(data)}")
    found, pos = [], 8
    while pos < used:
        length = _INT.unpack_from(data, pos)[0]
        if length < 0 or pos + 4 + length + 16 > used:
            raise ValueError("entry runs past the used length: corrupt")
        value = pos + 4 + length + (8 - (length + 4) % 8)
        found.append((pos + 4, length, value))
        pos = value + 16
    return found


def parse_values(data: bytes) -> list[tuple[str, float]]:
    """(key, value) pairs of one file in prometheus-client's mmap format."""
    return [(data[start:start + length].decode("utf-8"), _DOUBLE.unpack_from(data, value)[0])
            for start, length, value in _positions(data)]


@dataclass(frozen=True, slots=True)
class Layout:
    """One file as last parsed. Writers only append keys and update values in place, so while
    the inode and used length hold, one `unpack_from` re-reads it; every key length and key byte
    is compared, so a file changed in any other way is parsed again from scratch."""

    inode: int
    used: int
    row: struct.Struct  # the used length, then (key length, key, value) per entry
    lengths: tuple[int, ...]
    keys: tuple[bytes, ...]
    picks: tuple[int, ...]  # where in the row each counted value is
    ids: tuple[int, ...]  # what each counts into (`Decoder.slots`)
    unique: bool  # no key repeats (prometheus-client never writes one twice)
    absorbed: frozenset[str]
    foreign: int
    take: Callable[[tuple], tuple]  # the counted values of a row, in `ids` order (one C call)

    def unpack(self, data: bytes, inode: int) -> tuple | None:
        if inode != self.inode or len(data) < self.row.size or _INT.unpack_from(data, 0)[0] != self.used:
            return None
        row = self.row.unpack_from(data)
        if row[1::3] != self.lengths or row[2::3] != self.keys:
            return None
        return row


class Decoder:
    """Parses each key once and numbers what it counts, for `Layout`s that decode a whole file
    with one precompiled `struct` (parsing entry by entry was most of a scrape once files stayed
    open, bench/scrape.py).

    A key means a counted (family, labels), which gets a small int, its slot (`slots[slot]`);
    the name of a file an archive absorbed; or nothing (foreign). Both tables are bounded: `wanted`
    admits only the closed enums, and the key cache is cleared at `MAX_KEYS`.
    """

    MAX_KEYS = 10_000  # foreign writers could add keys without end

    def __init__(self) -> None:
        self._keys: dict[str, tuple[str, tuple] | str | None] = {}
        self._slot_ids: dict[tuple[str, tuple], int] = {}
        self.slots: list[tuple[str, tuple]] = []

    def layout(self, inode: int, data: bytes) -> Layout:
        """The layout of one file's `data`; raises one of `UNREADABLE` on a corrupt file."""
        positions = _positions(data)
        keys = tuple(data[start:start + length] for start, length, _value in positions)
        parsed = [self._parse(key.decode("utf-8")) for key in keys]
        counted = [(3 + 3 * i, p) for i, p in enumerate(parsed) if isinstance(p, tuple)]
        ids = tuple(self._slot(p) for _pick, p in counted)
        fmt = "=i4x" + "".join(f"i{n}s{8 - (n + 4) % 8}xd8x" for _s, n, _v in positions)
        return Layout(inode=inode, used=_INT.unpack_from(data, 0)[0], row=struct.Struct(fmt),
                      lengths=tuple(n for _s, n, _v in positions), keys=keys,
                      picks=tuple(pick for pick, _p in counted),
                      ids=ids, unique=len(set(ids)) == len(ids),
                      absorbed=frozenset(p for p in parsed if isinstance(p, str)),
                      foreign=sum(p is None for p in parsed), take=_taker(tuple(pick for pick, _p in counted)))

    def _parse(self, key: str) -> tuple[str, tuple] | str | None:
        """(family, labels) to keep, the file name an archive absorbed, or None: foreign."""
        if key in self._keys:
            return self._keys[key]
        family, name, labels, _help = json.loads(key)
        if not (isinstance(family, str) and isinstance(name, str) and isinstance(labels, dict)):
            raise ValueError(f"malformed key {key!r}")
        family = family.removesuffix("_total")  # a writer may name the family either way
        parsed: tuple[str, tuple] | str | None = None
        if family == ABSORBED:
            parsed = name
        elif wanted(family, name, labels):
            parsed = (family, tuple(sorted(labels.items())))
        if len(self._keys) >= self.MAX_KEYS:
            self._keys.clear()
        self._keys[key] = parsed
        return parsed

    def _slot(self, counted: tuple[str, tuple]) -> int:
        if counted not in self._slot_ids:
            self._slot_ids[counted] = len(self.slots)
            self.slots.append(counted)
        return self._slot_ids[counted]


def _taker(picks: tuple[int, ...]) -> Callable[[tuple], tuple]:
    """`row -> tuple(row[p] for p in picks)`, as one `itemgetter` where it can."""
    if len(picks) > 1:
        return operator.itemgetter(*picks)
    return (lambda row: (row[picks[0]],)) if picks else (lambda row: ())
