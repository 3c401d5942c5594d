"""What a clean install gets (issue 14): the wheel carries `py.typed` and the native source, and the
`fa4` extra installs FA4's betas without `pip install --pre` (which would take every dependency's
pre-releases too)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_declared_package_data_file_exists():
    """setuptools skips a package-data pattern that matches nothing, silently (the wheel lacked py.typed)."""
    for package, patterns in PYPROJECT["tool"]["setuptools"]["package-data"].items():
        folder = ROOT.joinpath(*package.split("."))
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches nothing"


def test_the_fa4_extra_admits_fa4_betas_without_pre():
    [fa4] = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["fa4"]]
    assert fa4.name == "flash-attn-4"
    # A specifier naming a pre-release admits pre-releases (PEP 440; packaging's SpecifierSet.prereleases)
    assert fa4.specifier.prereleases is True
    assert {v for v in ("4.0.0b35", "4.0.0b36", "4.0.0b40", "4.0.0b52", "4.0.0", "4.1.0b1", "4.1.0")
            if fa4.specifier.contains(v)} == {"4.0.0b36", "4.0.0b40", "4.0.0b52", "4.0.0"}


@pytest.mark.slow
def test_the_wheel_carries_py_typed_and_the_native_source(tmp_path):
    """`pip wheel` on a copy (an in-tree build would leave build/ and *.egg-info in the checkout)."""
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "fa4doctor", source / "fa4doctor",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("fa4doctor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"fa4doctor/py.typed", "fa4doctor/runtime/native/hit.cpp"} <= names
