"""Shared test set-up: every test starts with an empty decision cache and no policy variables.

`attention()` is the Python path here, whatever this machine's cache holds, unless
FA4DOCTOR_NATIVE_SUITE names a folder with a native build (scripts/test.sh's second pass runs the
runtime tests through it); tests/runtime/test_native.py builds and checks the compiled one itself.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("FA4DOCTOR_NATIVE_SUITE"):
    os.environ["XDG_CACHE_HOME"] = os.environ["FA4DOCTOR_NATIVE_SUITE"]
    os.environ.pop("FA4DOCTOR_NATIVE", None)
else:
    os.environ["FA4DOCTOR_NATIVE"] = "0"  # read once, when dispatch.runtime is first imported


@pytest.fixture(autouse=True)
def _fresh_dispatch_state(monkeypatch):
    from fa4doctor.dispatch import selection

    for name in ("FA4DOCTOR_BACKEND", "FA4DOCTOR_DISABLE", "FA4DOCTOR_STRICT", "FA4DOCTOR_POLICY", "FA4DOCTOR_LEDGER",
                 "FA4DOCTOR_METRICS_DIR", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    selection.cache_clear()
    yield
    selection.cache_clear()


@pytest.fixture(scope="session")
def native_build(tmp_path_factory) -> dict[str, str]:
    """An environ whose cache holds a build of runtime/native/hit.cpp for this torch (built once)."""
    import shutil
    import sysconfig
    from pathlib import Path

    from fa4doctor.runtime import native

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler}) to build runtime/native/hit.cpp")
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        pytest.skip("no Python.h (the python3-dev headers) to build runtime/native/hit.cpp")
    # In the native pass, the build that pass runs everything through (scripts/test.sh made it).
    cache = os.environ.get("FA4DOCTOR_NATIVE_SUITE") or str(tmp_path_factory.mktemp("xdg"))
    environ = {"HOME": os.environ.get("HOME", "/"), "XDG_CACHE_HOME": cache}
    built = native.build(environ)
    assert built.ok, built.error
    return environ
