"""Compaction of the dispatch metrics directory: dead writers' files summed into one archive.

Every `compact_interval` the daemon takes each writer file older than a grace period whose
exclusive non-blocking `flock` succeeds (its writer died; live writers hold `LOCK_SH`), sums it
into `counter_fa4doctor-archive.db` in the root, and deletes it; empty container subdirectories
go too. Totals never go down, and the directory does not grow with every job. The archive lists
the files it absorbed: readers skip them, so a crash (or a file the daemon may not delete)
between writing the archive and deleting them never counts anything twice. The scrape lock is
held only while a new archive is swapped in (issue 14: compacting 10,000 files under it stalled
a scrape 2.0 s).

>>> import tempfile
>>> compact(tempfile.mkdtemp()).absorbed
0
"""

from __future__ import annotations

import json
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from fa4doctor.runtime.counter_file import CounterFile, counter_key
from fa4doctor.serve.families import ABSORBED, FAMILIES, wanted
from fa4doctor.serve.file_format import UNREADABLE, parse_values, read_file, read_values
from fa4doctor.serve.writer_files import ARCHIVE_NAME, DEFAULT_GRACE_SECONDS, counter_files, writer_alive


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


# Files absorbed per archive written: bounds the memory a compaction holds, the archive's list of
# absorbed names, and what the scrape after each archive reads again. With 10,000 files, 1,000 per
# archive let single scrapes during the compaction reach 38-83 ms, 250 kept them to 22-29 ms
# (bench/scrape.py --scaling, 2-core VM).
BATCH = 250


def compact(root: str | os.PathLike, *, grace_seconds: float = DEFAULT_GRACE_SECONDS,
            now: float | None = None, lock: AbstractContextManager | None = None,
            batch: int = BATCH) -> Compaction:
    """Merge the files of dead writers into the archive and remove them (and empty subdirectories).

    Never blocks a scrape for long: files are tested, read and summed, and each new archive
    written and fsynced, without `lock`; `lock` (the daemon's scrape lock) is held only while the
    archive is replaced, so a scrape sees the old archive and every file it holds, or the new one
    (whose list of absorbed files it skips). The files go after the replacement, lock released:
    a scrape that meets them skips them by that list. Work goes `batch` files per archive.
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
    candidates = [(rel, path) for rel, path in counter_files(root).items()
                  if path.name.startswith("counter_") and path.name != ARCHIVE_NAME and rel not in still]
    absorbed = 0
    for start in range(0, len(candidates), max(1, batch)):
        dead, totals = _dead_files(candidates[start:start + max(1, batch)], now, grace_seconds)
        if not dead:
            continue
        try:
            _write_archive(root, archive, totals, dead.keys() | still, lock)
        except UNREADABLE as exc:
            return Compaction(absorbed=absorbed, error=f"{type(exc).__name__}: {exc}")
        still |= {rel for rel, path in dead.items() if not _unlink(path)}
        absorbed += len(dead)
    return Compaction(absorbed=absorbed, removed_dirs=_remove_empty_dirs(root, now, grace_seconds))


def _dead_files(candidates: list[tuple[str, Path]], now: float, grace: float) -> tuple[dict[str, Path], dict]:
    """The dead writers' files among `candidates` (rel -> path) and their counters summed, each
    file read once and summed as it is read (its rows are never all held at once)."""
    dead, totals, keys = {}, {}, {}
    for rel, path in candidates:
        if _old(path, now, grace) and not writer_alive(path):
            counts = _our_counts(path, keys)
            if counts is not None:
                dead[rel] = path
                for key, value in counts:
                    totals[key] = totals.get(key, 0.0) + value
    return dead, totals


def _sum_rows(totals: dict[tuple, float], rows: list) -> None:
    for family, name, labels, value in rows:
        if family != ABSORBED and wanted(family, name, labels):
            key = (family.removesuffix("_total"), name, tuple(sorted(labels.items())))
            totals[key] = totals.get(key, 0.0) + value


def _write_archive(root: Path, archive: Path, totals: dict[tuple, float], names: set[str],
                   lock: AbstractContextManager | None = None) -> None:
    """The archive's counts plus `totals`, listing `names` as absorbed, written beside it and
    swapped in under `lock`."""
    totals = dict(totals)
    if archive.exists():
        _sum_rows(totals, read_values(archive))
    tmp = root / f".archive-{os.getpid()}.tmp"  # not *.db: never read while half written
    tmp.unlink(missing_ok=True)
    out = CounterFile(tmp)
    try:
        for (family, name, labels), value in sorted(totals.items()):
            help_text = FAMILIES[family][0]
            out.write_value(counter_key(family, name, [k for k, _ in labels], [v for _, v in labels],
                                        help_text), value, 0.0)
        for rel in sorted(names):
            out.write_value(json.dumps([ABSORBED, rel, {}, ""]), 1.0, 0.0)
    finally:
        out.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # durable before it replaces the archive
    finally:
        os.close(fd)
    with lock or nullcontext():
        os.replace(tmp, archive)


def _our_counts(path: Path, keys: dict[str, tuple | str | None]) -> list[tuple[tuple, float]] | None:
    """(archive key, value) of each dispatch counter in a readable file holding some (or nothing
    yet); None for a foreign or corrupt one, which is never absorbed. `keys` caches what each key
    means across files (every writer's file repeats the same few): parsing each one again was most
    of a compaction's time, time a scrape waited for the GIL (bench/scrape.py --scaling)."""
    try:
        pairs = parse_values(read_file(path))
        meanings = [keys[k] if k in keys else keys.setdefault(k, _meaning(k)) for k, _v in pairs]
    except UNREADABLE:
        return None
    if pairs and all(m is None for m in meanings):
        return None
    return [(m, v) for m, (_k, v) in zip(meanings, pairs) if isinstance(m, tuple)]


def _meaning(key: str) -> tuple | str | None:
    """The archive's key of a dispatch counter, ABSORBED for an absorbed file's name, else None;
    raises on a malformed key (the file is corrupt)."""
    family, name, labels, _help = json.loads(key)
    if not (isinstance(family, str) and isinstance(name, str) and isinstance(labels, dict)):
        raise ValueError(f"malformed key {key!r}")
    if family == ABSORBED:
        return ABSORBED
    if wanted(family, name, labels):
        return (family.removesuffix("_total"), name, tuple(sorted(labels.items())))
    return None


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
