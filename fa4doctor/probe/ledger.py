"""The vetting ledger: a node-local JSON file of smoke outcomes that the dispatcher reads.

Location: `$FA4DOCTOR_LEDGER` if set, else `$XDG_STATE_HOME/fa4doctor/ledger.json`
(`~/.local/state/fa4doctor/ledger.json`). The node daemon and training pods share one by pointing
`FA4DOCTOR_LEDGER` at the same host path.

Writers take a file lock, merge, and replace the file atomically, so concurrent ranks never
corrupt it; a reader never raises: a missing, corrupt or foreign file reads as no entries plus a
`problem` saying why, which callers report and otherwise ignore.

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
from fa4doctor.records import RecordError, from_plain, to_plain, write_json_file

SCHEMA = "fa4doctor.ledger"
SCHEMA_VERSION = 2  # 2: each entry holds its CaseClass; 1 (flat) is read and upgraded
ENV_LEDGER = "FA4DOCTOR_LEDGER"


def default_ledger_path(environ: Mapping[str, str] | None = None) -> Path:
    """`$FA4DOCTOR_LEDGER`, else `$XDG_STATE_HOME/fa4doctor/ledger.json` (`~/.local/state/...`)."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_LEDGER):
        return Path(environ[ENV_LEDGER])
    return xdg_dir(environ, "XDG_STATE_HOME", ".local", "state") / "ledger.json"


@dataclass(frozen=True, slots=True)
class LedgerRead:
    entries: tuple[LedgerEntry, ...]
    problem: str | None = None  # why the file was ignored, when it was


def read_ledger(path: str | Path | None = None) -> LedgerRead:
    """Entries of the ledger at `path` (default location if None); never raises."""
    path = Path(path) if path is not None else default_ledger_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return LedgerRead(())
    except OSError as exc:
        return LedgerRead((), f"cannot read ledger {path}: {exc.strerror or exc}")
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
    """Merge `entries` into the ledger (newer results replace older ones of the same case)."""
    from filelock import FileLock  # only writers need it

    path = Path(path) if path is not None else default_ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        current = read_ledger(path).entries  # a corrupt file is replaced, not merged
        merged = {_key(e): e for e in current}
        merged.update({_key(e): e for e in entries})
        _write_atomically(path, tuple(merged.values()))
    return path


def _write_atomically(path: Path, entries: tuple[LedgerEntry, ...]) -> None:
    body = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "entries": to_plain(entries)}
    write_json_file(path, body, indent=1, durable=True)
