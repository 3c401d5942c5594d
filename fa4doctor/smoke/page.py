"""What `fa4doctor report` shows, gathered: the node's facts and problems and both matrices, as one
frozen record that `exporters/report_html.py` renders.

>>> from fa4doctor.environment import Environment
>>> page = build(Environment(), "a test")
>>> [p.code for p in page.problems][:1], page.speed.rows
(['fa4_not_eligible'], ())
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.report import build_report
from fa4doctor.environment import Environment, Finding
from fa4doctor.smoke.matrix import CorrectnessMatrix, correctness
from fa4doctor.smoke.speed_matrix import BenchFile, SpeedMatrix, speed_from_bench, speed_from_ledger


@dataclass(frozen=True)
class NodeReport:
    """Everything `fa4doctor report` shows: the node's facts, its problems (as `check` finds
    them, and any the caller adds), both matrices, where the facts came from and when."""

    env: Environment
    source: str
    generated_at: str
    problems: tuple[Finding, ...]
    correctness: tuple[CorrectnessMatrix, ...]
    speed: SpeedMatrix


def build(env: Environment, source: str, *, bench: BenchFile | None = None, policy: Policy = Policy(),
          problems: tuple[Finding, ...] = (), now: str | None = None) -> NodeReport:
    """The whole page's data for `env` (`bench`: speed from that report, else from the ledger)."""
    found = tuple(Finding(p["code"], p["severity"], p["message"], p["fix"])
                  for p in build_report(env, policy=policy)["problems"])
    speed = speed_from_bench(bench, env, policy) if bench is not None else speed_from_ledger(env, policy)
    return NodeReport(env, source, now or datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      found + tuple(problems), correctness(env, policy), speed)
