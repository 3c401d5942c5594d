"""Shared fixtures: promtool and Prometheus binaries (Debian's `prometheus` package), skipped with
the reason when absent; scripts/test.sh installs the package where apt is available."""

from __future__ import annotations

import shutil

import pytest


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: install Debian's `prometheus` package (scripts/test.sh does)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _binary("prometheus")
