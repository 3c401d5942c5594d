"""Shared fixtures: promtool and Prometheus binaries (Debian's `prometheus` package), skipped with
the reason when absent; scripts/test.sh installs the package where apt is available."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install Debian's `prometheus` package (scripts/test.sh does)")
    return path


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus not found: install Debian's `prometheus` package (scripts/test.sh does)")
    return path
