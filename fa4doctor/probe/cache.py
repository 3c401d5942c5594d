"""Small JSON results kept between checks, one file per key, in `$XDG_CACHE_HOME/fa4doctor`.

A key is a hash of everything the result depends on, so an entry is never stale, only unused;
the newest `keep` files of a kind are kept. A missing, foreign or unwritable cache is only a miss.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> write_json(folder, "demo", digest({"a": 1}), [1, 2]); read_json(folder, "demo", digest({"a": 1}))
[1, 2]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fa4doctor.records import digest, write_json_file


def xdg_dir(environ: Mapping[str, str], variable: str, *default: str) -> Path:
    """fa4doctor's folder under an XDG base directory: `$variable`, else `$HOME/<default...>`."""
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(environ.get(variable) or os.path.join(home, *default)) / "fa4doctor"


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CACHE_HOME/fa4doctor`, else `$HOME/.cache/fa4doctor`, read from `environ`."""
    return xdg_dir(os.environ if environ is None else environ, "XDG_CACHE_HOME", ".cache")


def read_json(cache_dir: Path, kind: str, key: str) -> Any | None:
    try:
        data = json.loads((cache_dir / f"{kind}-{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return data.get("value") if isinstance(data, dict) and data.get("key") == key else None


def write_json(cache_dir: Path, kind: str, key: str, value: Any, keep: int = 8) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_json_file(cache_dir / f"{kind}-{key}.json", {"key": key, "value": value})
        files = sorted(cache_dir.glob(f"{kind}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in files[keep:]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only home only costs the next check its speed
