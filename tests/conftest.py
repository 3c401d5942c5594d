"""Shared test set-up: every test starts with an empty decision cache and no policy variables."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_dispatch_state(monkeypatch):
    from fa4doctor.dispatch import selection

    for name in ("FA4DOCTOR_BACKEND", "FA4DOCTOR_DISABLE", "FA4DOCTOR_STRICT", "FA4DOCTOR_LEDGER",
                 "FA4DOCTOR_METRICS_DIR", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    selection.cache_clear()
    yield
    selection.cache_clear()
