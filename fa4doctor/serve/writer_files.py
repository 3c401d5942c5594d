"""The files in `FA4DOCTOR_METRICS_DIR`: which there are, opened without trusting them, and whose
writer is alive.

Training processes write `counter_<pid>-<8 hex>.db` files (prometheus-client's multiprocess mmap
format, read by `file_format.py`) and hold `flock(LOCK_SH)` on them while alive (`writer_alive`).
The root and its immediate subdirectories are read (one subdirectory per container, so pid
namespaces never share a directory, see docs/serve.md); deeper levels are ignored. The archive
lives in the root. Only regular files are opened, never through a symlink and never blocking (a
FIFO or `-> /dev/urandom` hung scrapes, issue 13): `open_regular` raises `NotRegularFile` for
anything else, which readers count as `not_regular`.

>>> import tempfile
>>> counter_files(tempfile.mkdtemp())
{}
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path

ARCHIVE_NAME = "counter_fa4doctor-archive.db"
# A writer creates its file and then locks it; a file younger than this may be unlocked only
# because its writer has not reached flock() yet.
DEFAULT_GRACE_SECONDS = 30.0
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


def signature(path: str) -> tuple[int, int, int] | None:
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


class Listing:
    """The `*.db` entries under one root, as `_entries` lists them, listed again only where a
    directory changed (issue 14: a scrape's cost must not grow with files that never change).

    A directory's listing is reused while its mtime and ctime are unchanged and were at least
    `QUIET_NS` old when it was listed (timestamps are taken from a coarse clock, so a change in
    the same tick as a listing could otherwise go unseen): one stat per directory when none
    changed.
    """

    QUIET_NS = 1_000_000_000

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)
        self._dirs: dict[str, tuple[tuple, bool, list, list]] = {}  # dir -> (stamp, trusted, files, subdirs)

    def entries(self) -> tuple[list[tuple[str, str, int, bool]], bool, list[str]]:
        """`_entries(root)` (root files, then each subdirectory's, each sorted), whether any
        directory was listed again, and the paths listed before that are gone or replaced since
        (so forgetting them costs what changed, not what is tracked)."""
        now, root, gone = time.time_ns(), self.root, []
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

    def clear(self) -> None:
        self._dirs.clear()

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
