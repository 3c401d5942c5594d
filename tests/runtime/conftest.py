"""Runtime tests: fresh plans, environment and counters per test; fake FA modules on request."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

FAKES = Path(__file__).parent / "fakes"
FAKE_MODULES = ("flash_attn", "flash_attn.cute", "flash_attn_interface", "fake_fa_core")


@pytest.fixture(autouse=True)
def fresh_runtime():
    from fa4doctor.runtime import counters as metrics, dispatcher as runtime

    registry = CollectorRegistry()
    counters = metrics.DispatchCounters(registry=registry)
    runtime.reset()
    metrics.install(counters)
    yield registry
    runtime.reset()
    metrics.install(None)


def _forget_fakes() -> None:
    for name in FAKE_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def fakes(monkeypatch):
    """Put the fake FA2/FA3/FA4 modules and their dist-info on the import path; yields the call log."""
    _forget_fakes()
    monkeypatch.syspath_prepend(str(FAKES))
    import fake_fa_core

    fake_fa_core.CALLS.clear()
    yield fake_fa_core.CALLS
    _forget_fakes()
