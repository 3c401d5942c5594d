"""The compiled hit path of `attention()`: build it once per torch, load it when it is there.

`attention()` in Python adds 1.95 us per call on a 2-core CPU VM
(docs/validation/cpu-vm/bench-dispatch-native-and-python.txt) and 4.49-9.25 us beside a tiny FA4
call on the lent H100, where reading q, k and v's attributes alone, right after FA4's launch path,
already costs 2.23-5.15 us (docs/validation/h100-bench-lanes). `hit.cpp` serves a call whose key it
remembers without a Python frame or Python objects for shapes and devices; every other call runs
the Python `attention()` unchanged, which validates, decides and tells `hit.cpp` the plan.

It is built against the imported torch's headers, libraries and C++ ABI with the system C++
compiler, into `$XDG_CACHE_HOME/fa4doctor/native/<tag>/`, where the tag covers the source, torch's
`version.py` (its version and commit) and folder, and Python's extension suffix, so an upgraded
torch never loads a stale build (a build that fails to load is logged and skipped). Build it with
`fa4doctor native build`; without it (or with `FA4DOCTOR_NATIVE=0`) `attention()` is the Python
function and behaves the same, only slower.

>>> load({"FA4DOCTOR_NATIVE": "0"}) is None
True
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from fa4doctor.probe.native_build import ENV_NATIVE, MODULE, SOURCE, artifact_path, disabled  # noqa: F401
from fa4doctor.probe.system import read_torch_info

# The keywords an entry holds, in the order `remember(plan, q, k, v, *KEYED)` takes them (hit.cpp kKeyed).
KEYED = ("attn_mask_type", "window_size", "softmax_scale", "dropout_p", "softcap", "deterministic")


@dataclass(frozen=True)
class BuildResult:
    """What `build` did: the library's path, or the compiler's words."""

    path: Path
    ok: bool
    seconds: float
    command: tuple[str, ...]
    error: str = ""


def compile_command(output: Path, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The compiler call: the imported torch's headers, libraries and C++ ABI, C++20 as torch's own
    extensions build (torch/utils/cpp_extension.py)."""
    import sysconfig

    import torch

    torch_dir = Path(torch.__file__).parent
    return (environ.get("CXX", "c++"), "-O2", "-std=c++20", "-shared", "-fPIC", "-fvisibility=hidden", "-w",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", f"-I{torch_dir / 'include'}",
            f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(output),
            f"-L{torch_dir / 'lib'}", "-lc10", "-ltorch_python", f"-Wl,-rpath,{torch_dir / 'lib'}")


def _imported_torch_dir() -> Path:
    import torch

    return Path(torch.__file__).parent


def build(environ: Mapping[str, str] | None = None, *, force: bool = False) -> BuildResult:
    """Compile `hit.cpp` for the installed torch (a no-op when that build exists, unless `force`).

    The library is written beside its final name and renamed into place, so a process loading it
    never sees half a file and concurrent builds (one per rank) cannot corrupt it.
    """
    import subprocess
    import tempfile

    environ = os.environ if environ is None else environ
    path = artifact_path(environ, _imported_torch_dir())
    if path.exists() and not force:
        return BuildResult(path, True, 0.0, ())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".build-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    command = compile_command(Path(temporary), environ)
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:  # no compiler at all
        done = subprocess.CompletedProcess(command, 127, "", f"{command[0]}: {exc.strerror or exc}")
    seconds = time.monotonic() - start
    if done.returncode != 0:
        os.unlink(temporary)
        said = (done.stderr or done.stdout).strip()[-4000:]
        return BuildResult(path, False, seconds, command,
                           said or f"{command[0]} exited with status {done.returncode} and printed nothing")
    os.replace(temporary, path)
    return BuildResult(path, True, seconds, command)


def _load_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(environ: Mapping[str, str] | None = None) -> ModuleType | None:
    """The built module for this torch, or None (not built, disabled, or failing to load)."""
    import logging  # here, not at the top: `fa4doctor check` reads `artifact_path` without it

    log = logging.getLogger("fa4doctor.dispatch")
    environ = os.environ if environ is None else environ
    if disabled(environ):
        return None
    path = artifact_path(environ, _imported_torch_dir())
    if not path.exists():
        log.debug("fa4doctor: no compiled hit path at %s (`fa4doctor native build`)", path)
        return None
    try:
        return _load_file(path)
    except Exception as exc:  # noqa: BLE001 (a broken build must never stop a training step)
        log.warning("fa4doctor: not using the compiled hit path %s: %s: %s", path, type(exc).__name__, exc)
        return None


@dataclass(frozen=True)
class Status:
    """Whether `attention()` in a new process here gets the compiled hit path, and if not, why."""

    path: Path
    torch: str
    disabled: bool  # FA4DOCTOR_NATIVE=0
    built: bool
    error: str = ""  # why the built library does not load

    @property
    def active(self) -> bool:
        return self.built and not self.disabled and not self.error


def status(environ: Mapping[str, str] | None = None) -> Status:
    """Load the build for this torch (if any) and say what a training process would get."""
    environ = os.environ if environ is None else environ
    torch_dir = _imported_torch_dir()
    path = artifact_path(environ, torch_dir)
    error = ""
    if path.exists():
        try:
            _load_file(path)
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {exc}"
    return Status(path, read_torch_info(torch_dir).version or "?", disabled(environ),
                  path.exists(), error)
