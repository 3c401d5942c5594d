"""The vetting ledger: a node-local JSON file of smoke outcomes that the dispatcher reads.

Location: `$FA4DOCTOR_LEDGER` if set, else `$XDG_STATE_HOME/fa4doctor/ledger.json`
(`~/.local/state/fa4doctor/ledger.json`). The node daemon and training pods share one by pointing
`FA4DOCTOR_LEDGER` at the same host path.

Writers take a file lock, merge, and replace the file atomically, so concurrent ranks never
corrupt it; a reader never raises: a missing, corrupt or foreign file reads as no entries plus a
`problem` saying why, which callers report and otherwise ignore. A writer never replaces a file
it could not read (another user's 0600 file, bytes that are not a ledger, a newer schema): it
raises `LedgerError` and leaves the file as it was, since merging "no entries" into it would
drop every entry it holds. A rewrite keeps the file's mode and group (`records.write_json_file`);
a new ledger is 0666 less the umask (0644 under the usual umask 022), readable by every user on
the node, as the daemon and training pods of other uids need (docs/serve.md).

Speed records (`fa4doctor bench`, `SpeedEntry`) sit beside the entries under `speed`, with their own
`speed_version`, in a file that stays schema 2: readers before them read `entries` only and ignore
the rest, so adding measurements never costs an older training process its smoke evidence (a new
schema_version would: they refuse the whole file). An older writer rewrites the file without them
(`fa4doctor bench` measures them again). A `speed` block this fa4doctor cannot read (a newer
`speed_version`) leaves the entries readable and is written back as it was.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "ledger.json")
>>> read_ledger(path).entries, read_ledger(path).problem
((), None)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from fa4doctor.environment import LedgerEntry, SpeedEntry, upgrade_ledger_entry
from fa4doctor.probe.cache import xdg_dir
from fa4doctor.records import (InputFileError, RecordError, from_plain, read_text_file, to_plain,
                                write_json_file)

SCHEMA = "fa4doctor.ledger"
SCHEMA_VERSION = 2  # 2: each entry holds its CaseClass; 1 (flat) is read and upgraded
SPEED_VERSION = 1  # the `speed` block's own version (module docstring)
ENV_LEDGER = "FA4DOCTOR_LEDGER"


def default_ledger_path(environ: Mapping[str, str] | None = None) -> Path:
    """`$FA4DOCTOR_LEDGER`, else `$XDG_STATE_HOME/fa4doctor/ledger.json` (`~/.local/state/...`)."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_LEDGER):
        return Path(environ[ENV_LEDGER])
    return xdg_dir(environ, "XDG_STATE_HOME", ".local", "state") / "ledger.json"


class LedgerError(RuntimeError):
    """A ledger a writer refuses to replace, because it could not read what it holds."""


@dataclass(frozen=True, slots=True)
class LedgerRead:
    entries: tuple[LedgerEntry, ...]
    problem: str | None = None  # why the file was ignored, when it was
    speed: tuple[SpeedEntry, ...] = ()
    speed_problem: str | None = None  # why the speed records were ignored (the entries still count)
    foreign_speed: object = None  # (speed_version, block) this fa4doctor cannot read, kept for rewrites


def read_ledger(path: str | Path | None = None) -> LedgerRead:
    """Entries of the ledger at `path` (default location if None); never raises."""
    path = Path(path) if path is not None else default_ledger_path()
    try:
        text = read_text_file(path)
    except FileNotFoundError:
        return LedgerRead(())
    except OSError as exc:
        return LedgerRead((), f"cannot read ledger {path}: {exc.strerror or exc}")
    except InputFileError as exc:
        return LedgerRead((), f"cannot read ledger: {exc}")
    if not text.strip():  # created empty ahead of time (with the node's mode and group): no entries yet
        return LedgerRead(())
    try:
        data = json.loads(text)
        return _with_speed(LedgerRead(_parse(data)), data, path)
    except (ValueError, RecordError) as exc:
        return LedgerRead((), f"ignoring ledger {path}: {exc}")


def _parse(data: object) -> tuple[LedgerEntry, ...]:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"not a fa4doctor ledger (expected \"schema\": \"{SCHEMA}\")")
    if data.get("schema_version") not in (1, SCHEMA_VERSION):
        raise ValueError(f"schema_version {data.get('schema_version')!r} is not 1 or {SCHEMA_VERSION}")
    entries = data.get("entries", [])
    if isinstance(entries, list):
        entries = [upgrade_ledger_entry(e) for e in entries]
    return from_plain(tuple[LedgerEntry, ...], entries, "entries")


def _with_speed(read: LedgerRead, data: dict, path: Path) -> LedgerRead:
    """`read` with the file's speed records; a block that cannot be read only loses those."""
    if "speed" not in data:
        return read
    version, block = data.get("speed_version"), data["speed"]
    if version != SPEED_VERSION:
        return replace(read, speed_problem=f"ignoring the speed records of {path}: speed_version {version!r} "
                       f"is not {SPEED_VERSION}", foreign_speed=(version, block))
    try:
        return replace(read, speed=from_plain(tuple[SpeedEntry, ...], block, "speed"))
    except RecordError as exc:
        return replace(read, speed_problem=f"ignoring the speed records of {path}: {exc}",
                       foreign_speed=(version, block))


def _key(entry: LedgerEntry) -> tuple:
    return (entry.backend, entry.fingerprint, entry.case, entry.direction, entry.gpu_uuid)


def _speed_key(entry: SpeedEntry) -> tuple:
    return (entry.backend, entry.kernel, entry.fingerprint, entry.shape_class, entry.direction, entry.gpu_uuid)


def record(entries: tuple[LedgerEntry, ...] | list[LedgerEntry], path: str | Path | None = None,
           speed: tuple[SpeedEntry, ...] | list[SpeedEntry] = ()) -> Path:
    """Merge `entries` and `speed` records into the ledger (newer results replace older ones of the
    same case; a speed record replaces the one of the same backend, kernel, fingerprint, shape
    class, direction and GPU).

    Raises `LedgerError`, writing nothing, when the existing file cannot be read as a ledger, or
    when `speed` is given and the file's speed records cannot be read.
    """
    from filelock import FileLock  # only writers need it

    path = Path(path) if path is not None else default_ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0666: every user who shares the ledger must be able to take its lock (filelock's default
    # follows the umask, 0644, and the lock file outlives the writer that created it)
    lock = FileLock(str(path) + ".lock", timeout=60, mode=0o666)
    try:
        lock.acquire()
    except PermissionError as exc:
        raise LedgerError(f"cannot lock {path}.lock ({exc.strerror}): make it writable to every user "
                          "of the ledger (mode 0666) or remove it") from None
    try:
        current = read_ledger(path)
        if current.problem:
            raise LedgerError(f"refusing to write {path}: {current.problem}; writing would drop what it "
                              "holds. Make it readable to this user (its mode and group) or move it aside")
        if speed and current.speed_problem:
            raise LedgerError(f"refusing to write speed records into {path}: {current.speed_problem}")
        merged = {_key(e): e for e in current.entries}
        merged.update({_key(e): e for e in entries})
        measured = {_speed_key(e): e for e in current.speed}
        measured.update({_speed_key(e): e for e in speed})
        _write_atomically(path, tuple(merged.values()), tuple(measured.values()), current.foreign_speed)
    finally:
        lock.release()
    return path


def _write_atomically(path: Path, entries: tuple[LedgerEntry, ...], speed: tuple[SpeedEntry, ...] = (),
                      foreign_speed: object = None) -> None:
    body = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "entries": to_plain(entries)}
    if foreign_speed is not None:  # a newer fa4doctor's measurements: kept as they were
        body["speed_version"], body["speed"] = foreign_speed
    elif speed:
        body["speed_version"], body["speed"] = SPEED_VERSION, to_plain(speed)
    write_json_file(path, body, indent=1, durable=True)
