"""What the daemon knows at any moment: `DaemonState`, the one snapshot the collector and the HTTP
routes read, replaced whole when a cycle ends, and the closed label values of its own counters.

>>> from dataclasses import replace
>>> state = DaemonState(started=0.0)
>>> replace(state, probe_cycles=1, ready=True).ready, state.ready
(True, False)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fa4doctor.serve.gpu_load import GpuLoad
from fa4doctor.serve.revet import Vetting

# Closed label values of the daemon's own counters; every one is exported, zeros included.
FAILURE_OUTCOMES = ("failed", "crash", "timeout", "bad_output", "spawn_failed")
# plan_failed: the probe's report could not be planned from, or the child's spec file not written
REVET_FAILURE_OUTCOMES = (*FAILURE_OUTCOMES, "plan_failed")
SKIP_REASONS = ("gpus_busy", "nvml_unavailable", "no_gpu")
# /readyz answers 503 once this many probe cycles in a row have produced no valid report: the
# daemon then serves only a stale report (22 failed cycles stayed "ready", issue 13). One or two
# failures, a slow import or a busy node, do not flap it. docs/serve.md#readiness says why.
UNREADY_AFTER_FAILURES = 3


@dataclass(frozen=True, slots=True)
class DaemonState:
    """The latest snapshot the collector and the HTTP routes read (replaced whole, never mutated)."""

    started: float = field(default_factory=time.time)
    ready: bool = False
    check: dict | None = None
    smoke: dict | None = None
    probe_up: bool = False
    probe_last_success: float | None = None
    probe_last_seconds: float | None = None
    probe_cycles: int = 0
    probe_failures: tuple[tuple[str, int], ...] = ()
    probe_failures_in_a_row: int = 0
    ledger_problem: str | None = None  # why the vetting ledger could not be read, at the last look
    smoke_runs: int = 0
    smoke_failures: tuple[tuple[str, int], ...] = ()
    smoke_skips: tuple[tuple[str, int], ...] = ()
    smoke_last_success: float | None = None
    nvml_up: bool = False
    nvml_poll_failures: int = 0
    gpus: tuple[GpuLoad, ...] = ()
    compacted_files: int = 0
    compaction_failures: int = 0
    vetting: tuple[Vetting, ...] = ()
    revet_pending: bool = False
    revet_runs: int = 0
    revet_failures: tuple[tuple[str, int], ...] = ()
    revet_last_success: float | None = None
