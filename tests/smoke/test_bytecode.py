"""Bytecode for the smoke children: kept in fa4doctor's cache only where the installation has none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fa4doctor.probe import bytecode
from fa4doctor.smoke.runner import _child_environ

ROOT = Path(__file__).resolve().parents[2]


def _package(root: Path, name: str, relative: str, compiled: bool) -> Path:
    source = root / name / relative
    source.parent.mkdir(parents=True, exist_ok=True)
    (root / name / "__init__.py").touch()
    source.write_text("X = 1\n")
    if compiled:
        import py_compile

        py_compile.compile(str(source), cfile=str(source.parent / "__pycache__" /
                                                   f"{source.stem}.{sys.implementation.cache_tag}.pyc"))
    return source


def test_sources_are_found_without_importing_and_bytecode_is_seen(tmp_path):
    torch_init = _package(tmp_path, "torch", "__init__.py", compiled=True)
    interface = _package(tmp_path, "flash_attn", "cute/interface.py", compiled=False)
    found = bytecode.probe_sources(["fa4", "sdpa"], path=[str(tmp_path)])
    assert found == [str(torch_init), str(interface)]
    assert [bytecode.has_bytecode(s) for s in found] == [True, False]
    assert bytecode.probe_sources(["fa4"], path=[str(tmp_path / "empty")]) == []


def test_the_children_get_a_prefix_only_where_python_cannot_keep_bytecode_itself(tmp_path):
    with_pyc = str(_package(tmp_path, "torch", "__init__.py", compiled=True))
    without = str(_package(tmp_path, "flash_attn", "cute/interface.py", compiled=False))
    environ = {"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/bin"}
    assert bytecode.child_bytecode(environ, tmp_path, [with_pyc]).apply(environ) == environ
    plan = bytecode.child_bytecode(environ, tmp_path, [with_pyc, without])
    assert plan.missing == (without,)
    assert plan.apply(environ) == {"PATH": "/bin", "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")}
    own = {**environ, "PYTHONPYCACHEPREFIX": "/mine"}  # the user's prefix is never replaced
    assert bytecode.child_bytecode(own, tmp_path, [without]).apply(own) == own
    writable = {"PATH": "/bin"}  # Python writes it beside the source at the first import
    assert bytecode.child_bytecode(writable, tmp_path, [without]).apply(writable) == writable


def test_a_child_started_with_that_environment_writes_its_bytecode_to_the_cache(tmp_path, monkeypatch):
    """The runner's child environment, on an installation without bytecode: a child importing
    fa4doctor leaves the compiled modules under `$XDG_CACHE_HOME/fa4doctor/pycache`."""
    missing = str(_package(tmp_path / "site", "torch", "__init__.py", compiled=False))
    monkeypatch.setattr(bytecode, "probe_sources", lambda backends, path=None: [missing])
    environ = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": str(ROOT)}
    env = _child_environ(environ, fake=None, backends={"sdpa"})
    prefix = tmp_path / "cache" / "fa4doctor" / "pycache"
    assert env["PYTHONPYCACHEPREFIX"] == str(prefix) and "PYTHONDONTWRITEBYTECODE" not in env
    subprocess.run([sys.executable, "-c", "import fa4doctor.smoke.process"], env=env, check=True,
                   cwd=tmp_path, timeout=120)
    assert list(prefix.rglob(f"process.{sys.implementation.cache_tag}.pyc"))


def test_the_report_says_where_the_children_kept_their_bytecode():
    from rich.console import Console

    from fa4doctor.exporters.smoke_view import render_smoke
    from fa4doctor.smoke.report import CaseResult, SmokeReport

    case = (CaseResult(backend="sdpa", case="sdpa:x", spec={}, direction="fwd", outcome="pass"),)
    plain = SmokeReport(level="quick", cases=case, bytecode_cache="/c/fa4doctor/pycache").to_plain()
    assert plain["bytecode_cache"] == "/c/fa4doctor/pycache"
    console = Console(record=True, width=200)
    render_smoke(plain, console)
    assert "the children keep their bytecode in /c/fa4doctor/pycache" in console.export_text()
    console = Console(record=True, width=200)
    render_smoke(SmokeReport(level="quick", cases=case).to_plain(), console)
    assert "bytecode" not in console.export_text()
