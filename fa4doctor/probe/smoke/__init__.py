"""Smoke kernels: prove each backend on this node by running it against a float64 reference.

`run_smoke(env, level="quick")` returns a `SmokeReport`; see `runner.py`. Names load on first use:
importing this package imports neither torch nor a backend.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_smoke": "fa4doctor.probe.smoke.runner",
    "SmokeReport": "fa4doctor.probe.smoke.report",
    "CaseResult": "fa4doctor.probe.smoke.report",
    "LEVELS": "fa4doctor.probe.smoke.cases",
    "plan_cases": "fa4doctor.probe.smoke.cases",
    "parse_head_dims": "fa4doctor.probe.smoke.cases",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fa4doctor.probe.smoke' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
