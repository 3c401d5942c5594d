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

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "ledger.json")
>>> read_ledger(path).entries, read_ledger(path).problem
((), None)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fa4doctor.environment import LedgerEntry, upgrade_ledger_entry
from fa4doctor.probe.cache import xdg_dir
from fa4doctor.records import (InputFileError, RecordError, from_plain, read_text_file, to_plain,
                                write_json_file)

SCHEMA = "fa4doctor.ledger"
SCHEMA_VERSION = 2  # 2: each entry holds its CaseClass; 1 (flat) is read and upgraded
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
        return LedgerRead(_parse(text))
    except (ValueError, RecordError) as exc:
        return LedgerRead((), f"ignoring ledger {path}: {exc}")


def _parse(text: str) -> tuple[LedgerEntry, ...]:
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"not a fa4doctor ledger (expected \"schema\": \"{SCHEMA}\")")
    if data.get("schema_version") not in (1, SCHEMA_VERSION):
        raise ValueError(f"schema_version {data.get('schema_version')!r} is not 1 or {SCHEMA_VERSION}")
    entries = data.get("entries", [])
    if isinstance(entries, list):
        entries = [upgrade_ledger_entry(e) for e in entries]
    return from_plain(tuple[LedgerEntry, ...], entries, "entries")


def _key(entry: LedgerEntry) -> tuple:
    return (entry.backend, entry.fingerprint, entry.case, entry.direction, entry.gpu_uuid)


def record(entries: tuple[LedgerEntry, ...] | list[LedgerEntry], path: str | Path | None = None) -> Path:
    """Merge `entries` into the ledger (newer results replace older ones of the same case).

    Raises `LedgerError`, writing nothing, when the existing file cannot be read as a ledger.
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
        merged = {_key(e): e for e in current.entries}
        merged.update({_key(e): e for e in entries})
        _write_atomically(path, tuple(merged.values()))
    finally:
        lock.release()
    return path


def _write_atomically(path: Path, entries: tuple[LedgerEntry, ...]) -> None:
    body = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "entries": to_plain(entries)}
    write_json_file(path, body, indent=1, durable=True)
