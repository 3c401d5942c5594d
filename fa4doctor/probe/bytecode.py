"""Whether torch and the backends have bytecode, and where the smoke children keep theirs.

Images that strip `__pycache__` and set `PYTHONDONTWRITEBYTECODE=1` make every new Python process
compile its imports from source. On the lent H100 (torch 2.11 without bytecode) that was 1,077
`compile()` calls and 3.65 s inside `import flash_attn.cute` alone, and `import torch` took 5.7 to
7.5 s (docs/validation/h100-import-profile.txt). `fa4doctor check` reports it (every training
rank pays it at start). A smoke child is such a process every run, so where the packages it
imports lack bytecode beside their sources, the children write and read it under fa4doctor's own
cache instead (`PYTHONPYCACHEPREFIX`, Python >= 3.8): the installation is not touched, and every
run after the first starts warm. A user's own prefix is always kept.

>>> plan = child_bytecode({"PYTHONDONTWRITEBYTECODE": "1"}, Path("/c"), ["/no/such/torch/__init__.py"])
>>> plan.set, plan.unset
({'PYTHONPYCACHEPREFIX': '/c/pycache'}, ('PYTHONDONTWRITEBYTECODE',))
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Iterable, Mapping

PREFIX, DONT_WRITE = "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE"
# The largest module each child imports, per backend: torch's package and FA4's interface.
_PROBES = {"torch": ("torch", "__init__.py"), "fa4": ("flash_attn", "cute/interface.py")}


@dataclass(frozen=True, slots=True)
class BytecodePlan:
    """Environment changes for the children, and the sources that had no bytecode."""

    set: dict[str, str]
    unset: tuple[str, ...]
    missing: tuple[str, ...]

    def apply(self, environ: dict[str, str]) -> dict[str, str]:
        out = {k: v for k, v in environ.items() if k not in self.unset}
        out.update(self.set)
        return out


def has_bytecode(source: str | Path) -> bool:
    """Whether `source` has bytecode in its `__pycache__` for this interpreter."""
    path = Path(source)
    return (path.parent / "__pycache__" / f"{path.stem}.{sys.implementation.cache_tag}.pyc").is_file()


def probe_sources(backends: Iterable[str], path: list[str] | None = None) -> list[str]:
    """Source files of what the children will import (searching `path`, default `sys.path`),
    found without importing anything."""
    sources = []
    for name in ("torch", *backends):
        package, relative = _PROBES.get(name, (None, None))
        spec = PathFinder.find_spec(package, path) if package else None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(folder) / relative
            if candidate.is_file():
                sources.append(str(candidate))
                break
    return sources


def missing_bytecode(backends: Iterable[str], path: list[str] | None = None) -> tuple[str, ...]:
    """The sources of torch and of `backends` (names: "fa4", ...) that have no bytecode beside them."""
    return tuple(s for s in probe_sources(backends, path) if not has_bytecode(s))


def stuck(missing: Iterable[str], environ: Mapping[str, str]) -> tuple[str, ...]:
    """Of the sources without bytecode, those Python will not write it for either: all of them
    under `PYTHONDONTWRITEBYTECODE`, else those in a read-only folder; none under a user's prefix."""
    if environ.get(PREFIX):
        return ()
    return tuple(s for s in missing if environ.get(DONT_WRITE) or not os.access(os.path.dirname(s), os.W_OK))


def child_bytecode(environ: Mapping[str, str], cache_root: Path, sources: Iterable[str]) -> BytecodePlan:
    """Where to keep the children's bytecode: unchanged when the user chose a prefix or Python
    can keep it beside every source; else fa4doctor's cache (`cache_root/pycache`)."""
    missing = stuck((s for s in sources if not has_bytecode(s)), environ)
    if not missing:
        return BytecodePlan({}, (), missing)
    return BytecodePlan({PREFIX: str(cache_root / "pycache")}, (DONT_WRITE,), missing)
