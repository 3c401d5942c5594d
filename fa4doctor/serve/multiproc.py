"""The dispatch counters of every process on the node, summed from `FA4DOCTOR_METRICS_DIR`.

Training processes write `counter_<pid>-<8 hex>.db` files (prometheus-client's multiprocess mmap
format) and hold `flock(LOCK_SH)` on them while alive. The daemon reads the directory on every
scrape (`CounterReader`) and, between scrapes, compacts it (`compaction.py`: files whose writer
died are summed into one archive file and removed, so totals stay monotonic across restarts).

Layout: the root and its immediate subdirectories are read (one subdirectory per container, so
pid namespaces never share a directory, see docs/serve.md); deeper levels are ignored. The archive
lives in the root. Corrupt files, files of other metric types, foreign metric names and label
values outside the closed enums are skipped and counted, never raised. Only regular files are
opened, never through a symlink and never blocking (a FIFO or `-> /dev/urandom` hung scrapes,
issue 13); anything else is counted as `not_regular`. A file that read well and then turns
corrupt keeps counting at its last good values, so node totals never go down because of it.

A scrape's cost does not grow with dead writers' files (issue 14): a file whose writer is gone can
never change, so once a background step (`CounterReader.settle`) has proven it (the writer's lock
is gone) the scrape after reads it one last time and from then on counts it from memory, as one
running sum; directories are listed again only when they change. Live writers' files are read
on every scrape: a writer updates its mmap in place, which changes neither size nor used length,
and the kernel updates mtime only on the first write after writeback (measured: a second write
0.05 s or 1.1 s later left st_mtime_ns unchanged on ext4 and tmpfs), so no stat can tell.

>>> import tempfile
>>> read_dispatch_counters(tempfile.mkdtemp()).files["writer"]
0
"""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import operator
import os
import stat
import struct
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from fa4doctor.runtime.counter_file import CounterFile as MmapedDict  # noqa: F401  the format's writer, for callers and tests
from fa4doctor.runtime.counters import CALLS, FALLBACK_LABELS, FALLBACKS, UNVETTED
from fa4doctor.dispatch.reasons import BackendName, ReasonCode

ARCHIVE_NAME = "counter_fa4doctor-archive.db"
# A key the archive carries for each file it absorbed, so a crash between writing the archive and
# unlinking the files never counts them twice (readers skip listed files, compaction unlinks them).
ABSORBED = "fa4doctor_archive_absorbed"
# A writer creates its file and then locks it; a file younger than this may be unlocked only
# because its writer has not reached flock() yet.
DEFAULT_GRACE_SECONDS = 30.0

# What reading a corrupt, truncated or half-created file can raise.
UNREADABLE = (OSError, ValueError, RuntimeError, UnicodeDecodeError, TypeError, struct.error)
_BACKENDS = frozenset(b.value for b in BackendName)
_REASONS = frozenset(r.value for r in ReasonCode)
# family -> (help, label names, allowed values per label): the closed set this daemon re-exports,
# named as the dispatcher writes it (fa4doctor/runtime/counters.py).
FAMILIES = {
    CALLS: (
        "Attention calls run, by the backend that ran them, summed over the node's processes.",
        ("backend",), (_BACKENDS,)),
    FALLBACKS: (
        "Attention calls that did not run on the preferred backend, by why not.",
        FALLBACK_LABELS, (_BACKENDS, _BACKENDS, _REASONS)),
    UNVETTED: (
        "Attention calls on a GPU run by a backend with no passing smoke evidence for their class under "
        "the current fingerprint, summed over the node's processes.",
        ("backend",), (_BACKENDS,)),
}
FILE_STATES = ("writer", "archive", "ignored", "corrupt", "not_regular")
# Never follow a symlink, never block on a FIFO's open (O_NONBLOCK); fstat then refuses anything
# that is not a regular file, so no read waits on a writer or streams from a device.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


class NotRegularFile(OSError):
    """A symlink, FIFO, socket, device or directory where a counter file should be."""


def open_regular(path: str | os.PathLike) -> int:
    """A read-only fd of the regular file at `path`; raises `NotRegularFile` for anything else."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise NotRegularFile(errno.ELOOP, "a symlink", str(path)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, "not a regular file", str(path))
    return fd


@dataclass(frozen=True, slots=True)
class CounterSnapshot:
    """Summed counters plus what the directory held: `files[state]` counts writer (or live and
    dead) / archive / ignored / corrupt / not_regular files; `samples_dropped` counts foreign
    samples; `held` counts the corrupt files (and removed ones) still counted at their last good
    values."""

    families: tuple[Metric, ...] = ()
    files: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILE_STATES, 0))
    samples_dropped: int = 0
    held: int = 0


def _entries(root: Path) -> list[tuple[str, str, int, bool]]:
    """(path, path relative to root, inode, whether it is a regular file) of `*.db` in the root
    and its immediate subdirectories. The type comes from the directory entry (no stat, no open)."""
    found: list[tuple[str, str, int, bool]] = []
    try:
        top = list(os.scandir(root))
    except OSError:
        return found
    for entry in top:
        if entry.name.endswith(".db"):
            found.append((entry.path, entry.name, entry.inode(), _regular(entry)))
        elif entry.is_dir(follow_symlinks=False):
            try:
                found.extend((e.path, f"{entry.name}/{e.name}", e.inode(), _regular(e))
                             for e in os.scandir(entry.path) if e.name.endswith(".db"))
            except OSError:  # removed while we listed it
                continue
    return sorted(found)


def _regular(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:  # removed since it was listed
        return False


def _signature(path: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of a regular file, without following a symlink; None otherwise."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def counter_files(root: str | os.PathLike) -> dict[str, Path]:
    """Regular `*.db` files in the root and its immediate subdirectories (one per container), by
    their path relative to the root."""
    return {rel: Path(path) for path, rel, _inode, regular in _entries(Path(root)) if regular}


def read_file(path: str | os.PathLike) -> bytes:
    """The used bytes of one counter file, opened with `open_regular`."""
    fd = open_regular(path)
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def _read_fd(fd: int) -> bytes:
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


def writer_alive(path: Path) -> bool:
    """True while some process holds a lock on the file (its writer's LOCK_SH)."""
    try:
        fd = open_regular(path)
    except (FileNotFoundError, NotRegularFile):  # a FIFO or a symlink is nobody's counter file
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our lock
    return False


def wanted(family: str, name: str, labels: dict) -> bool:
    spec = FAMILIES.get(family.removesuffix("_total"))
    if spec is None or name != family.removesuffix("_total") + "_total":
        return False
    names, allowed = spec[1], spec[2]
    return (tuple(sorted(labels)) == tuple(sorted(names))
            and all(labels[n] in values for n, values in zip(names, allowed)))


_INT = struct.Struct("i")
_DOUBLE = struct.Struct("d")


def _positions(data: bytes) -> list[tuple[int, int, int]]:
    """(key offset, key length, value offset) of each entry in prometheus-client's mmap format
    (fa4doctor/runtime/counter_file.py: a 4-byte used length, 4 bytes padding, then entries of a
    4-byte key length, the UTF-8 key padded to 8-byte alignment, a double value and a double
    timestamp); raises on a used length or an entry that runs past the data."""
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
class _Layout:
    """One file as last parsed. Writers only append keys and update values in place, so while
    the inode and used length hold, one `unpack_from` re-reads it; every key length and key byte
    is compared, so a file changed in any other way is parsed again from scratch."""

    inode: int
    used: int
    row: struct.Struct  # the used length, then (key length, key, value) per entry
    lengths: tuple[int, ...]
    keys: tuple[bytes, ...]
    picks: tuple[int, ...]  # where in the row each counted value is
    ids: tuple[int, ...]  # what each counts into (`CounterReader._slots`)
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


class CounterReader:
    """Reads one metrics directory, scrape after scrape.

    Each file stays open between scrapes and is read with one `pread` (open/read/close of 64
    files was most of a scrape, bench/scrape.py); a replaced file (new inode) is reopened, a
    removed one closed. Keys are parsed once (`_keys`, bounded), and a file whose keys have not
    changed is decoded with one precompiled `struct` (`_Layout`: parsing entry by entry was most
    of what remained). Counters are summed across files exactly as prometheus-client's
    `MultiProcessCollector.merge` sums counters, in one pass that also validates each file:
    merge would read and parse every file a second time.

    Counters never go down because of a bad file (issue 13; docs/serve.md): each file's last
    good values (per inode) are kept, a file that reads lower than them counts at them, a file that
    turns corrupt counts at them (`held`), and when a held file is removed its values stay in the
    totals (`_retired`) for the daemon's lifetime. A writer only ever adds to its file, so a
    value below the last good one can only be damage.

    Settled files (issue 14): `settle()`, run off the scrape path, marks the files whose writer is
    gone (no lock, older than the grace period, as compaction decides); the next `read()` reads
    each one last time and, if it read well with integer values, moves it into `_settled_sums`
    (exact: sums of integers below 2**53), closes it and drops its layout. Later scrapes skip it
    until it leaves the directory, is replaced, is listed by the archive, or `settle()` sees its
    size or mtime change. Directory listings are reused while a directory's mtime and ctime are
    unchanged and were at least `QUIET_NS` old when it was listed (timestamps are taken from a
    coarse clock, so a change in the same tick as a listing could otherwise go unseen).
    """

    MAX_OPEN = 1024  # beyond this many files, read the rest without keeping them open
    MAX_KEYS = 10_000  # foreign writers could add keys without end
    MAX_TRACKED = 20_000  # files whose last good values are kept (about 0.5 KiB each)
    QUIET_NS = 1_000_000_000
    RECHECK = 2000  # settled files stat-ed per `settle()`: 10,000 at once held the GIL from scrapes
    EXACT = 2.0 ** 36  # per value: 20,000 settled files of such values still sum below 2**53

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._fds: dict[str, tuple[int, int]] = {}  # path -> (inode, fd)
        self._keys: dict[str, tuple[str, tuple] | str | None] = {}
        self._layouts: dict[str, _Layout] = {}
        self._slot_ids: dict[tuple[str, tuple], int] = {}
        self._slots: list[tuple[str, tuple]] = []
        self._good: dict[str, tuple[int, tuple, tuple]] = {}  # path -> (inode, slots, last good values)
        self._held: set[str] = set()  # corrupt now, counted at their last good values
        self._retired: dict[int, float] = {}  # last good values of held files since removed
        self._dirs: dict[str, tuple[tuple, bool, list, list]] = {}  # dir -> (stamp, trusted, files, subdirs)
        self._dead: dict[str, tuple[int, int, int]] = {}  # proven dead, to settle: path -> (inode, size, mtime_ns)
        # path -> (inode, size, mtime_ns, state, foreign samples, absorbed names); values in `_good`
        self._settled: dict[str, tuple[int, int, int, str, int, tuple]] = {}
        self._settled_sums: dict[int, float] = {}
        self._settled_refs: dict[int, int] = {}  # how many settled values each slot sums
        self._settled_tally: Tally = Tally()
        self._settled_foreign = 0
        self._last_absorbed: frozenset = frozenset()
        self._generation = 0  # bumped whenever the settled set changes
        self._recheck = 0  # where the next `settle()` goes on re-checking settled files
        self._active: tuple[int, list] = (-1, [])  # (generation, entries not settled), per listing
        self._lock = threading.Lock()

    def read(self, *, check_locks: bool = False) -> CounterSnapshot:
        """Writer files count as `writer`, or as `live`/`dead` with `check_locks`."""
        with self._lock:
            entries, changed, gone = self._listing()
            for path in gone:
                self._close(path)
            if not entries and not self.root.is_dir() and not self._retired:
                return CounterSnapshot(families=tuple(empty_dispatch_families()))
            totals: dict[int, float] = dict(self._retired)
            tally, dropped, ready = Tally(), 0, []
            archived = self._settled.get(os.path.join(self.root, ARCHIVE_NAME))
            absorbed: set[str] = set(archived[5]) if archived else set()
            if changed or self._active[0] != self._generation:  # settled files are summed already
                settled = self._settled
                self._active = (self._generation, [e for e in entries if e[0] not in settled])
            active = self._active[1]
            # the archive first: the files it lists are already in it
            for path, rel, inode, regular in ([e for e in active if e[1] == ARCHIVE_NAME]
                                              + [e for e in active if e[1] != ARCHIVE_NAME]):
                if rel in absorbed:  # compaction unlinks it; the archive holds its counts now
                    self._forget(path)
                    continue
                state, foreign = self._add(path, rel, inode, totals, absorbed) if regular else ("not_regular", 0)
                if state == "archive":
                    self._unsettle_absorbed(absorbed)
                dropped += foreign
                if state == "writer" and check_locks:
                    state = "live" if writer_alive(Path(path)) else "dead"
                tally[state] += 1
                dead = self._dead.pop(path, None)
                if dead is not None and dead[0] == inode and state in ("writer", "dead", "archive", "ignored"):
                    ready.append((path, dead, "writer" if state == "dead" else state, foreign,
                                  self._last_absorbed))
            _add_to(totals, tuple(self._settled_sums), tuple(self._settled_sums.values()))
            tally.update(self._settled_tally)
            if check_locks and "writer" in tally:  # settled writers are dead by proof
                tally["dead"] += tally.pop("writer")
            dropped += self._settled_foreign
            for found in ready:  # after summing: their values are in `totals` once
                self._settle(*found)
            named = {self._slots[slot]: value for slot, value in totals.items()}
            held = len(self._held) + bool(self._retired)
        return _snapshot(named, tally, dropped, held)

    def _add(self, path: str, rel: str, inode: int, totals: dict, absorbed: set) -> tuple[str, int]:
        if not rel.rpartition("/")[2].startswith("counter_"):
            return "ignored", 0
        try:
            data = self._bytes(path, inode)
            layout = self._layouts.get(path)
            row = layout.unpack(data, inode) if layout else None
            if row is None:
                layout = self._layout(path, inode, data)
                row = layout.row.unpack_from(data)
        except NotRegularFile:  # replaced by a FIFO or a symlink since it was listed
            self._forget(path)
            return "not_regular", 0
        except UNREADABLE:
            self._layouts.pop(path, None)
            good = self._good.get(path)
            if good is not None and good[0] == inode:  # it read well before: its last good values
                self._held.add(path)
                _add_to(totals, good[1], good[2])
            return "corrupt", 0
        absorbed.update(layout.absorbed)
        self._last_absorbed = layout.absorbed  # what `_settle` keeps, were this file to settle now
        self._held.discard(path)
        ids, values = self._floor(path, inode, layout.ids, layout.take(row))
        if layout.unique:
            for slot, value in zip(ids, values):
                totals[slot] = totals.get(slot, 0.0) + value
        else:  # a key that repeats in one file is summed within the file first, as merge does
            sums: dict[int, float] = {}
            _add_to(sums, ids, values)
            _add_to(totals, tuple(sums), tuple(sums.values()))
        if rel == ARCHIVE_NAME:
            return "archive", layout.foreign
        return ("ignored" if layout.foreign and not layout.ids else "writer"), layout.foreign

    def _layout(self, path: str, inode: int, data: bytes) -> _Layout:
        positions = _positions(data)
        keys = tuple(data[start:start + length] for start, length, _value in positions)
        parsed = [self._parse(key.decode("utf-8")) for key in keys]
        counted = [(3 + 3 * i, p) for i, p in enumerate(parsed) if isinstance(p, tuple)]
        ids = tuple(self._slot(p) for _pick, p in counted)
        fmt = "=i4x" + "".join(f"i{n}s{8 - (n + 4) % 8}xd8x" for _s, n, _v in positions)
        layout = _Layout(inode=inode, used=_INT.unpack_from(data, 0)[0], row=struct.Struct(fmt),
                         lengths=tuple(n for _s, n, _v in positions), keys=keys,
                         picks=tuple(pick for pick, _p in counted),
                         ids=ids, unique=len(set(ids)) == len(ids),
                         absorbed=frozenset(p for p in parsed if isinstance(p, str)),
                         foreign=sum(p is None for p in parsed), take=_taker(tuple(pick for pick, _p in counted)))
        if path in self._layouts or len(self._layouts) < self.MAX_OPEN:
            self._layouts[path] = layout
        return layout

    def _floor(self, path: str, inode: int, ids: tuple, values: tuple) -> tuple[tuple, tuple]:
        """This file's values, never below its last good ones (a writer only adds: a lower value
        or a lost key is damage), remembered as its last good."""
        good = self._good.get(path)
        if good is not None and good[0] == inode:
            if good[1] == ids:  # its keys are as they were: compare in place (C loops)
                if any(map(operator.lt, values, good[2])):
                    values = tuple(map(max, values, good[2]))
            else:  # keys appended, or some lost: compare slot by slot, keep the lost ones
                last = dict(zip(good[1], good[2]))
                values = tuple(max(v, last.get(s, 0.0)) for s, v in zip(ids, values))
                lost = [(s, v) for s, v in zip(good[1], good[2]) if s not in ids]
                ids, values = ids + tuple(s for s, _ in lost), values + tuple(v for _, v in lost)
        if good is not None or len(self._good) < self.MAX_TRACKED:
            self._good[path] = (inode, ids, values)
        return ids, values

    def _slot(self, counted: tuple[str, tuple]) -> int:
        """A small int per (family, labels): bounded, as `wanted` admits only the closed enums."""
        if counted not in self._slot_ids:
            self._slot_ids[counted] = len(self._slots)
            self._slots.append(counted)
        return self._slot_ids[counted]

    def _bytes(self, path: str, inode: int) -> bytes:
        cached = self._fds.get(path)
        if cached and cached[0] != inode:
            os.close(self._fds.pop(path)[1])
            cached = None
        if cached is None:
            if len(self._fds) >= self.MAX_OPEN:
                return read_file(path)
            cached = self._fds[path] = (inode, open_regular(path))
        return _read_fd(cached[1])

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

    def _close_missing(self, present: dict[str, int]) -> None:
        """Forget what left the directory (`present`: path -> inode); a settled file that left
        or was replaced is counted no more."""
        for path in [p for p, s in self._settled.items() if present.get(p) != s[0]]:
            self._unsettle(path)
        for path in [p for p in self._dead if p not in present]:
            del self._dead[path]
        for path in [p for p in self._fds if p not in present]:
            os.close(self._fds.pop(path)[1])
        for path in [p for p in self._layouts if p not in present]:
            del self._layouts[path]
        for path in [p for p in self._good if p not in present]:
            _inode, ids, values = self._good.pop(path)
            if path in self._held:  # a corrupt file removed by hand: its counts were real
                _add_to(self._retired, ids, values)
        self._held = {p for p in self._held if p in present}

    def _close(self, path: str) -> None:
        """A file left the directory or was replaced: forget it; a corrupt one held at its last
        good values keeps them in the totals (its counts were real)."""
        held = path in self._held
        good = self._good.get(path)
        self._forget(path)
        if path in self._fds:
            os.close(self._fds.pop(path)[1])
        self._layouts.pop(path, None)
        if held and good is not None:
            _add_to(self._retired, good[1], good[2])

    def _forget(self, path: str) -> None:
        """Drop a file's last good values: they are in the archive now, or it is not a file."""
        self._unsettle(path)
        self._dead.pop(path, None)
        self._good.pop(path, None)
        self._held.discard(path)

    # -- listing ---------------------------------------------------------------------------------
    def _listing(self) -> tuple[list[tuple[str, str, int, bool]], bool, list[str]]:
        """`_entries(root)` (root files, then each subdirectory's, each sorted), whether any
        directory was listed again, and the paths listed before that are gone or replaced since
        (so forgetting them costs what changed, not what is tracked): one stat per directory
        when none changed."""
        now, root, gone = time.time_ns(), str(self.root), []
        top = self._list_dir(root, "", now, gone)
        if top is None:
            changed = bool(self._dirs)
            for path in list(self._dirs):
                self._drop_dir(path, gone)
            return [], changed, gone
        entries, subdirs, changed = list(top[0]), top[1], top[2]
        for name in subdirs:
            listed = self._list_dir(os.path.join(root, name), name + "/", now, gone)
            if listed is None:  # removed since the root was listed
                changed = True
                continue
            entries += listed[0]
            changed |= listed[2]
        if top[2]:  # the root was listed again: forget subdirectories removed since
            keep = {root, *(os.path.join(root, name) for name in subdirs)}
            for path in [d for d in self._dirs if d not in keep]:
                self._drop_dir(path, gone)
        return entries, changed, gone

    def _list_dir(self, path: str, prefix: str, now: int, gone: list[str]) -> tuple[list, list, bool] | None:
        """(`*.db` entries, subdirectory names if `prefix` is empty, listed again?) of one
        directory; its cached listing while its stamp holds and was quiet when listed."""
        try:
            st = os.stat(path)
        except OSError:
            self._drop_dir(path, gone)
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._dirs.get(path)
        if cached is not None and cached[0] == stamp and cached[1]:
            return cached[2], cached[3], False
        files, subdirs = [], []
        try:
            with os.scandir(path) as listing:
                for entry in listing:
                    if entry.name.endswith(".db"):
                        files.append((entry.path, prefix + entry.name, entry.inode(), _regular(entry)))
                    elif not prefix and entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
        except OSError:  # removed while we listed it
            self._drop_dir(path, gone)
            return None
        files.sort()
        subdirs.sort()
        if cached is not None:
            now_there = {e[0]: e[2] for e in files}
            gone += [e[0] for e in cached[2] if now_there.get(e[0]) != e[2]]
        quiet = now - max(st.st_mtime_ns, st.st_ctime_ns) >= self.QUIET_NS
        self._dirs[path] = (stamp, quiet, files, subdirs)
        return files, subdirs, True

    def _drop_dir(self, path: str, gone: list[str]) -> None:
        cached = self._dirs.pop(path, None)
        if cached is not None:
            gone += [e[0] for e in cached[2]]

    # -- settling --------------------------------------------------------------------------------
    def settle(self, *, grace_seconds: float = DEFAULT_GRACE_SECONDS, now: float | None = None) -> int:
        """Mark the counted files whose writer is gone, for the next `read()` to settle, and
        unsettle those whose size or mtime changed since. The daemon's maintenance thread runs
        it between scrapes: each file costs a stat and, while unsettled, a lock test (open,
        flock, close); scrapes wait for the reader's lock only while the results are stored.
        Returns how many files were newly found dead."""
        now = time.time() if now is None else now
        with self._lock:
            todo = [(p, g[0]) for p, g in self._good.items()
                    if p not in self._settled and p not in self._held and p not in self._dead]
            settled = [(p, s[:3]) for p, s in self._settled.items()]
            # a bounded share of the settled files each pass, in turn: a stat each
            start = self._recheck % len(settled) if settled else 0
            settled = (settled + settled)[start:start + min(len(settled), self.RECHECK)]
            self._recheck = start + len(settled)
        dead = {}
        for path, inode in todo:
            sig = _signature(path)
            if (sig is not None and sig[0] == inode and now - sig[2] / 1e9 >= grace_seconds
                    and not writer_alive(Path(path))):
                dead[path] = sig
        changed = [path for path, sig in settled if _signature(path) != sig]
        with self._lock:
            for path, sig in dead.items():
                good = self._good.get(path)
                if good is not None and good[0] == sig[0] and path not in self._settled:
                    self._dead[path] = sig
            for path in changed:  # read again by the next scrape, its last good values kept
                self._unsettle(path)
        return len(dead)

    def _settle(self, path: str, sig: tuple[int, int, int], state: str, foreign: int,
                absorbed: frozenset) -> None:
        """Count a dead writer's file from memory from now on (its values are final)."""
        good = self._good.get(path)
        if (good is None or good[0] != sig[0] or path in self._held
                or not all(v.is_integer() and abs(v) < self.EXACT for v in good[2])):
            return  # not exact as a running sum, or not tracked: stays on the per-scrape path
        self._settled[path] = (*sig, state, foreign, tuple(absorbed))  # all atomic: untracked by the GC
        for slot, value in zip(good[1], good[2]):
            self._settled_sums[slot] = self._settled_sums.get(slot, 0.0) + value
            self._settled_refs[slot] = self._settled_refs.get(slot, 0) + 1
        self._settled_tally[state] += 1
        self._generation += 1
        self._settled_foreign += foreign
        self._layouts.pop(path, None)
        if path in self._fds:
            os.close(self._fds.pop(path)[1])

    def _unsettle(self, path: str) -> None:
        """Take a settled file out of the running sum (exact: integers); it is read again next
        scrape, if it is still there, from its last good values on."""
        record = self._settled.pop(path, None)
        if record is None:
            return
        _inode, ids, values = self._good[path]
        for slot, value in zip(ids, values):
            refs = self._settled_refs[slot] - 1
            if refs:
                self._settled_refs[slot] = refs
                self._settled_sums[slot] -= value
            else:  # no settled file holds it: gone, as a fresh read would not have it
                del self._settled_refs[slot], self._settled_sums[slot]
        self._settled_tally[record[3]] -= 1
        self._generation += 1
        self._settled_foreign -= record[4]

    def _unsettle_absorbed(self, absorbed: set[str]) -> None:
        """The archive just read holds these files' counts: settled ones leave the running sum."""
        for rel in absorbed:
            path = os.path.join(self.root, rel)
            if path in self._settled:
                self._forget(path)

    def close(self) -> None:
        with self._lock:
            self._close_missing({})
            self._dirs.clear()


def _add_to(totals: dict[int, float], ids: tuple, values: tuple) -> None:
    for slot, value in zip(ids, values):
        totals[slot] = totals.get(slot, 0.0) + value


def _taker(picks: tuple[int, ...]) -> Callable[[tuple], tuple]:
    """`row -> tuple(row[p] for p in picks)`, as one `itemgetter` where it can."""
    if len(picks) > 1:
        return operator.itemgetter(*picks)
    return (lambda row: (row[picks[0]],)) if picks else (lambda row: ())


def _snapshot(totals: dict[tuple, float], tally: Tally, dropped: int, held: int = 0) -> CounterSnapshot:
    families = empty_dispatch_families()
    for family in families:
        for (name, labels), value in sorted(totals.items()):
            if name == family.name:
                family.add_sample(name + "_total", dict(labels), value)
    files = dict.fromkeys(FILE_STATES, 0) | dict(tally)
    return CounterSnapshot(families=tuple(families), files=files, samples_dropped=dropped, held=held)


def read_dispatch_counters(root: str | os.PathLike, *, check_locks: bool = False) -> CounterSnapshot:
    """Sum the dispatch counters of every valid file under `root` once (see `CounterReader`)."""
    reader = CounterReader(root)
    try:
        return reader.read(check_locks=check_locks)
    finally:
        reader.close()


def empty_dispatch_families() -> list[Metric]:
    return [CounterMetricFamily(name, spec[0], labels=spec[1]) for name, spec in FAMILIES.items()]
