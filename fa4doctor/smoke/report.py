"""What a smoke run found: one result per case and direction, phase times, and ledger entries.

`SmokeReport.to_plain()` is the JSON of `fa4doctor smoke --json` (schema `fa4doctor.smoke`,
version 1); `ledger_entries` are the results as the dispatcher reads them back.

>>> report = SmokeReport(level="quick", cases=(CaseResult(backend="sdpa", case="sdpa:x",
...     spec={}, direction="fwd", outcome="pass"),))
>>> report.to_plain()["cases"][0]["outcome"], report.healthy
('pass', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fa4doctor.environment import LedgerEntry
from fa4doctor.records import to_plain

SCHEMA = "fa4doctor.smoke"
SCHEMA_VERSION = 1
OUTCOMES = ("pass", "wrong_result", "refused", "compile_failed", "crash", "timeout", "oom", "skipped")


def failed(outcome: str) -> bool:
    """Every outcome but a pass or a skip (the backward of a failed forward) is a failure."""
    return outcome not in ("pass", "skipped")
TENSORS = ("out", "dq", "dk", "dv")


@dataclass(frozen=True, slots=True)
class CaseResult:
    """One case in one direction on one GPU (`gpu` is the CUDA index the parent saw, or None)."""

    backend: str
    case: str
    spec: dict
    direction: str
    outcome: str
    detail: str = ""
    gpu: int | None = None
    gpu_uuid: str | None = None
    gpu_name: str | None = None
    errors: dict = field(default_factory=dict)
    tolerances: dict = field(default_factory=dict)
    compile_seconds: float | None = None
    run_seconds: float | None = None

    @property
    def failed(self) -> bool:
        return failed(self.outcome)

    def to_plain(self) -> dict:
        finite = lambda x: x if isinstance(x, (int, float)) and math.isfinite(x) else None  # noqa: E731
        return {"backend": self.backend, "gpu": self.gpu, "gpu_uuid": self.gpu_uuid,
                "gpu_name": self.gpu_name, "case": self.case, "spec": self.spec,
                "direction": self.direction, "outcome": self.outcome, "detail": self.detail,
                "errors": {t: finite(self.errors.get(t)) for t in TENSORS},
                "tolerances": {t: finite(self.tolerances.get(t)) for t in TENSORS},
                "compile_seconds": self.compile_seconds, "run_seconds": self.run_seconds}


@dataclass(frozen=True, slots=True)
class Phases:
    """Wall time of each phase, in seconds. Children import while the compile phase runs, so
    `import_seconds` (the slowest child's import) overlaps `compile_seconds`."""

    import_seconds: float = 0.0
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class GpuTarget:
    """A GPU the smoke run used, for labels: CUDA index, NVML index and UUID."""

    gpu: int | None
    nvml_index: int | None
    uuid: str | None
    name: str | None


@dataclass(frozen=True)
class SmokeReport:
    level: str
    cases: tuple[CaseResult, ...] = ()
    phases: Phases = field(default_factory=Phases)
    ledger: str | None = None  # where the entries were recorded, None if they were not
    ledger_problem: str | None = None
    ledger_entries: tuple[LedgerEntry, ...] = ()
    gpus: tuple[GpuTarget, ...] = ()
    started_at: float | None = None  # Unix time
    finished_at: float | None = None
    bytecode_cache: str | None = None  # PYTHONPYCACHEPREFIX of the children (probe/bytecode.py)

    @property
    def failures(self) -> tuple[CaseResult, ...]:
        return tuple(c for c in self.cases if c.failed)

    @property
    def healthy(self) -> bool:
        """Every case that ran passed (and something ran)."""
        return bool(self.cases) and not self.failures

    def to_plain(self) -> dict:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "level": self.level,
                "ledger": self.ledger, "ledger_problem": self.ledger_problem,
                "phases": to_plain(self.phases),
                "started_at": self.started_at, "finished_at": self.finished_at,
                "gpus": to_plain(self.gpus), "bytecode_cache": self.bytecode_cache,
                "healthy": self.healthy,
                "cases": [c.to_plain() for c in self.cases]}
