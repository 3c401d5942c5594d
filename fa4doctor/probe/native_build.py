"""Where the compiled hit path of `attention()` for this torch is built, and whether it is switched
off: facts `check` reports without importing torch. `fa4doctor.runtime.native` builds and loads it.

The tag covers `hit.cpp`'s source, torch's `version.py` (its version and commit) and folder, and
Python's extension suffix, so an upgraded torch never loads a stale build.

>>> from fa4doctor.probe.system import find_torch_dir  # the torch on sys.path, not imported
>>> artifact_path({"HOME": "/home/u"}, find_torch_dir()).parts[:6]
('/', 'home', 'u', '.cache', 'fa4doctor', 'native')
"""

from __future__ import annotations

import importlib.machinery
from collections.abc import Mapping
from pathlib import Path

from fa4doctor.probe.cache import default_cache_dir
from fa4doctor.records import digest

ENV_NATIVE = "FA4DOCTOR_NATIVE"  # "0": never load the compiled hit path
MODULE = "fa4doctor_native_hit"  # hit.cpp's PyInit_<name>
SOURCE = Path(__file__).parents[1] / "runtime" / "native" / "hit.cpp"  # read as data, never imported here


def artifact_path(environ: Mapping[str, str] | None, torch_dir: Path | None) -> Path | None:
    """Where the library for this source, Python and the torch in `torch_dir` lives, whether or not
    it exists; None without a torch there. Read without importing torch, so `fa4doctor check` can
    say whether it is built: torch's `version.py` names its version and commit."""
    try:
        version_py = (Path(torch_dir) / "version.py").read_text() if torch_dir is not None else None
    except OSError:
        version_py = None
    if version_py is None:
        return None
    # The suffix names the Python ABI and platform (cpython-312-x86_64-linux-gnu).
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    facts = {"source": digest(SOURCE.read_text()), "suffix": suffix, "torch": digest(version_py),
             "dir": str(Path(torch_dir).resolve())}  # as the import system and sys.path spell it alike
    return default_cache_dir(environ) / "native" / digest(facts, 16) / f"{MODULE}{suffix}"


def disabled(environ: Mapping[str, str]) -> bool:
    return environ.get(ENV_NATIVE, "").strip() == "0"
