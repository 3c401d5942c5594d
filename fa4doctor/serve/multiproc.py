"""The dispatch counters of every process on the node, summed from `FA4DOCTOR_METRICS_DIR`.

The daemon reads the directory on every scrape (`CounterReader`) and, between scrapes, compacts it
(`compaction.py`: files whose writer died are summed into one archive file and removed, so totals
stay monotonic across restarts). Which files there are and how they are opened is
`writer_files.py`'s; what their bytes hold, `file_format.py`'s; which samples count,
`families.py`'s. Corrupt files, files of other metric types, foreign metric names and label
values outside the closed enums are skipped and counted, never raised. A file that read well and
then turns corrupt keeps counting at its last good values, so node totals never go down because
of it.

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

import operator
import os
import threading
import time
from collections import Counter as Tally
from pathlib import Path

from fa4doctor.serve.families import CounterSnapshot, empty_dispatch_families, snapshot
from fa4doctor.serve.file_format import UNREADABLE, Decoder, Layout, read_fd, read_file
from fa4doctor.serve.writer_files import (ARCHIVE_NAME, DEFAULT_GRACE_SECONDS, Listing, NotRegularFile, open_regular,
                                          signature, writer_alive)


class CounterReader:
    """Reads one metrics directory, scrape after scrape.

    Each file stays open between scrapes and is read with one `pread` (open/read/close of 64
    files was most of a scrape, bench/scrape.py); a replaced file (new inode) is reopened, a
    removed one closed. A file whose keys have not changed is decoded with its `Layout`, kept
    per file (`Decoder`). Counters are summed across files exactly as prometheus-client's
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
    size or mtime change. Directories are listed through a `Listing`, again only when they change.
    """

    MAX_OPEN = 1024  # beyond this many files, read the rest without keeping them open
    MAX_TRACKED = 20_000  # files whose last good values are kept (about 0.5 KiB each)
    RECHECK = 2000  # settled files stat-ed per `settle()`: 10,000 at once held the GIL from scrapes
    EXACT = 2.0 ** 36  # per value: 20,000 settled files of such values still sum below 2**53

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._fds: dict[str, tuple[int, int]] = {}  # path -> (inode, fd)
        self._decoder = Decoder()
        self._layouts: dict[str, Layout] = {}
        self._good: dict[str, tuple[int, tuple, tuple]] = {}  # path -> (inode, slots, last good values)
        self._held: set[str] = set()  # corrupt now, counted at their last good values
        self._retired: dict[int, float] = {}  # last good values of held files since removed
        self._listing = Listing(self.root)
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
            entries, changed, gone = self._listing.entries()
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
            named = {self._decoder.slots[slot]: value for slot, value in totals.items()}
            held = len(self._held) + bool(self._retired)
        return snapshot(named, tally, dropped, held)

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

    def _layout(self, path: str, inode: int, data: bytes) -> Layout:
        layout = self._decoder.layout(inode, data)
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

    def _bytes(self, path: str, inode: int) -> bytes:
        cached = self._fds.get(path)
        if cached and cached[0] != inode:
            os.close(self._fds.pop(path)[1])
            cached = None
        if cached is None:
            if len(self._fds) >= self.MAX_OPEN:
                return read_file(path)
            cached = self._fds[path] = (inode, open_regular(path))
        return read_fd(cached[1])

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
            sig = signature(path)
            if (sig is not None and sig[0] == inode and now - sig[2] / 1e9 >= grace_seconds
                    and not writer_alive(Path(path))):
                dead[path] = sig
        changed = [path for path, sig in settled if signature(path) != sig]
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
            self._listing.clear()


def _add_to(totals: dict[int, float], ids: tuple, values: tuple) -> None:
    for slot, value in zip(ids, values):
        totals[slot] = totals.get(slot, 0.0) + value


def read_dispatch_counters(root: str | os.PathLike, *, check_locks: bool = False) -> CounterSnapshot:
    """Sum the dispatch counters of every valid file under `root` once (see `CounterReader`)."""
    reader = CounterReader(root)
    try:
        return reader.read(check_locks=check_locks)
    finally:
        reader.close()
