"""Smoke results as vetting-ledger entries, and recording them.

Each entry carries the fingerprint (`fa4doctor.dispatch.vetting.fingerprint`) of the backend on
the GPU it ran on, so the dispatcher applies it only while that software stack and GPU model last.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from fa4doctor.names import BackendName
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import case_class, fingerprint
from fa4doctor.environment import Environment, GpuFacts, LedgerEntry
from fa4doctor.probe import ledger
from fa4doctor.smoke.report import CaseResult, SmokeReport


def ledger_entries(env: Environment, gpus: Sequence[GpuFacts],
                   results: Sequence[CaseResult]) -> tuple[LedgerEntry, ...]:
    """The results the dispatcher should know about. Skipped directions say nothing about the
    kernel, and CPU runs (no GPU) vet nothing."""
    by_uuid = {g.uuid: g for g in gpus}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    entries = []
    for r in results:
        gpu = by_uuid.get(r.gpu_uuid)
        if gpu is None or r.outcome == "skipped":
            continue
        backend = BackendName(r.backend)
        spec = AttentionSpec.from_dict(r.spec)
        entries.append(LedgerEntry(backend=backend, fingerprint=fingerprint(backend, env, gpu), case=r.case,
                                   case_class=case_class(spec), direction=r.direction, outcome=r.outcome,
                                   detail=r.detail if r.outcome != "pass" else "", gpu_uuid=gpu.uuid,
                                   recorded_at=now))
    return tuple(entries)


def record_report(report: SmokeReport, ledger_path: str | Path | None = None) -> SmokeReport:
    """Merge the report's entries into the ledger; a ledger that cannot be written is reported
    in `ledger_problem`, and the results still stand."""
    if not report.ledger_entries:
        return report
    try:
        path = ledger.record(report.ledger_entries, ledger_path)
    except Exception as exc:  # filelock.Timeout, OSError: the caller decides what it means
        return replace(report, ledger_problem=f"could not record the ledger: {type(exc).__name__}: {exc}")
    return replace(report, ledger=str(path))
