"""Smoke kernels: prove each backend on this node by running it against a float64 reference.

`run_smoke(env, level="quick")` returns a `SmokeReport`; see `runner.py`. `run_bench` times the
backends in the same children (`bench.py`). Names load on first use:
importing this package imports neither torch nor a backend.
"""

from __future__ import annotations

from fa4doctor._lazy import lazy_exports

_EXPORTS = {
    "run_smoke": "fa4doctor.smoke.runner",
    "run_bench": "fa4doctor.smoke.bench",
    "SmokeReport": "fa4doctor.smoke.report",
    "CaseResult": "fa4doctor.smoke.report",
    "LEVELS": "fa4doctor.smoke.cases",
    "plan_cases": "fa4doctor.smoke.cases",
    "parse_head_dims": "fa4doctor.smoke.cases",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
