"""Compaction of the dispatch metrics directory: dead writers' files summed into one archive.

Every `compact_interval` the daemon takes each writer file older than a grace period whose
exclusive non-blocking `flock` succeeds (its writer died; live writers hold `LOCK_SH`), sums it
into `counter_fa4doctor-archive.db` in the root, and deletes it; empty container subdirectories
go too. Totals never go down, and the directory does not grow with every job. The archive lists
the files it absorbed: readers skip them, so a crash (or a file the daemon may not delete)
between writing the archive and deleting them never counts anything twice.

>>> import tempfile
>>> compact(tempfile.mkdtemp()).absorbed
0
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from fa4doctor.serve.multiproc import (ABSORBED, ARCHIVE_NAME, DEFAULT_GRACE_SECONDS, FAMILIES,
                                           UNREADABLE, counter_files, read_values, wanted,
                                           writer_alive)


def _absorbed_names(archive: Path) -> set[str]:
    try:
        names = {name for family, name, _l, _v in read_values(archive) if family == ABSORBED}
    except UNREADABLE:
        return set()
    return {name for name in names if _safe_name(name)}


def _safe_name(rel: str) -> bool:
    """A writer file directly in the root or one subdirectory down: an archive (a file anyone in
    the group can write) must never make the daemon delete anything else."""
    parts = rel.split("/")
    return (len(parts) <= 2 and all(p not in ("", ".", "..") for p in parts)
            and parts[-1].startswith("counter_") and parts[-1].endswith(".db")
            and rel != ARCHIVE_NAME)


@dataclass(frozen=True, slots=True)
class Compaction:
    absorbed: int = 0
    removed_dirs: int = 0
    error: str | None = None


def compact(root: str | os.PathLike, *, grace_seconds: float = DEFAULT_GRACE_SECONDS,
            now: float | None = None) -> Compaction:
    """Merge the files of dead writers into the archive and remove them (and empty subdirectories).

    Callers serialise this with reads (the daemon holds one lock around both).
    """
    root = Path(root)
    if not root.is_dir():
        return Compaction()
    now = time.time() if now is None else now
    archive = root / ARCHIVE_NAME
    # Files the archive already holds are deleted now; one that cannot be (a crash, or no write
    # permission) stays listed in the next archive, so it is never counted twice.
    still = set()
    for stale in _absorbed_names(archive):
        if not _unlink(root / stale):
            still.add(stale)
    dead = {}  # rel -> (path, its rows), each file read once
    for rel, path in counter_files(root).items():
        if (path.name.startswith("counter_") and path.name != ARCHIVE_NAME and rel not in still
                and _old(path, now, grace_seconds) and not writer_alive(path)):
            rows = _our_rows(path)
            if rows is not None:
                dead[rel] = (path, rows)
    if not dead:
        return Compaction(removed_dirs=_remove_empty_dirs(root, now, grace_seconds))
    try:
        _write_archive(root, archive, dead, still)
    except UNREADABLE as exc:
        return Compaction(error=f"{type(exc).__name__}: {exc}")
    for path, _rows in dead.values():
        _unlink(path)
    return Compaction(absorbed=len(dead), removed_dirs=_remove_empty_dirs(root, now, grace_seconds))


def _write_archive(root: Path, archive: Path, dead: dict[str, tuple[Path, list]], still: set[str]) -> None:
    sources = [rows for _path, rows in dead.values()]
    if archive.exists():
        sources.append(read_values(archive))
    totals: dict[tuple, float] = {}
    for rows in sources:
        for family, name, labels, value in rows:
            if family != ABSORBED and wanted(family, name, labels):
                key = (family.removesuffix("_total"), name, tuple(sorted(labels.items())))
                totals[key] = totals.get(key, 0.0) + value
    tmp = root / f".archive-{os.getpid()}.tmp"  # not *.db: never read while half written
    tmp.unlink(missing_ok=True)
    out = MmapedDict(str(tmp))
    try:
        for (family, name, labels), value in sorted(totals.items()):
            help_text = FAMILIES[family][0]
            out.write_value(mmap_key(family, name, [k for k, _ in labels], [v for _, v in labels],
                                     help_text), value, 0.0)
        for rel in sorted(still | dead.keys()):
            out.write_value(json.dumps([ABSORBED, rel, {}, ""]), 1.0, 0.0)
    finally:
        out.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # durable before it replaces the archive
    finally:
        os.close(fd)
    os.replace(tmp, archive)


def _our_rows(path: Path) -> list | None:
    """The rows of a readable file holding dispatch counters (or nothing yet); None for a foreign
    or corrupt one, which is never absorbed."""
    try:
        rows = read_values(path)
    except UNREADABLE:
        return None
    return rows if not rows or any(wanted(f, n, l) or f == ABSORBED for f, n, l, _v in rows) else None


def _old(path: Path, now: float, grace: float) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return now - stat.st_mtime >= grace  # mtime: utime-able in tests, and mmap writes bump it


def _unlink(path: Path) -> bool:
    """True if the file is gone afterwards."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _remove_empty_dirs(root: Path, now: float, grace: float) -> int:
    removed = 0
    for entry in list(os.scandir(root)):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False) and _old(path, now, grace):
            try:
                path.rmdir()  # only succeeds when empty: a container that left nothing behind
                removed += 1
            except OSError:
                pass
    return removed
