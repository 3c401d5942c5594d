"""Re-vetting after an upgrade: what the daemon runs when a fingerprint changes, and whether the
ledger already covers it.

A ledger entry counts only under the fingerprint it was recorded with (`dispatch.vetting`), so a
new FA4 beta, cutlass-dsl, torch, driver or FA4 knob leaves the node with no proof for anything.
The periodic smoke run is `quick`, one case per backend, which misses the head-dim bugs of
`dispatch.known_bugs`; so after a change the daemon runs `--revet-level` (default `standard`) with
the operator's shapes (`--smoke-spec FILE`; default: `check`'s default specs plus a training spec
at every head dim a known bug has touched).

A target is one backend on one GPU; it is current when the ledger holds evidence, pass or fail,
under its fingerprint for every direction of every case the plan runs there.

>>> plan = load_plan("standard", None)
>>> plan.level, [name for name, _ in plan.specs][-1]
('standard', 'bf16_d112_causal_train_known_bug')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from fa4doctor.dispatch.default_specs import DEFAULT_SPECS
from fa4doctor.dispatch.known_bugs import head_dims_touched
from fa4doctor.dispatch.spec import AttentionSpec, load_specs
from fa4doctor.dispatch.vetting import case_class, directions, fingerprint
from fa4doctor.environment import Environment, GpuFacts, LedgerEntry
from fa4doctor.names import BackendName
from fa4doctor.smoke.cases import SmokeCase, level_specs, plan_cases, user_specs

SPEC_FILE = "revet-specs.json"


@dataclass(frozen=True, slots=True)
class RevetPlan:
    """The level and the named extra shapes of a re-vetting run ("off": none)."""

    level: str
    specs: tuple[tuple[str, AttentionSpec], ...] = ()


def default_specs() -> tuple[tuple[str, AttentionSpec], ...]:
    """`check`'s default specs, plus smoke's training case at every head dim a known bug touched."""
    touched = user_specs(head_dims=[(d, d) for d in head_dims_touched()])
    return DEFAULT_SPECS + tuple((f"bf16_d{s.head_dim_qk}_causal_train_known_bug", s) for s in touched)


def load_plan(level: str, spec_file: str | Path | None) -> RevetPlan:
    """The plan for `--revet-level` and `--smoke-spec` (read once: a bad file fails at start-up)."""
    return RevetPlan(level, tuple(load_specs(spec_file)) if spec_file else default_specs())


def child_args(plan: RevetPlan, directory: str | Path) -> tuple[str, ...]:
    """The smoke child's arguments; the shapes go in a spec file written to `directory`, so the
    child runs exactly the specs this daemon plans with."""
    if not plan.specs:
        return ("--level", plan.level)
    path = Path(directory) / SPEC_FILE
    path.write_text(json.dumps({"specs": [{"name": name, **spec.to_dict()} for name, spec in plan.specs]}))
    return ("--level", plan.level, "--spec", str(path))


def covers(level: str, other: str) -> bool:
    """True when smoke level `level` runs every spec of level `other` (standard holds quick's one
    case; thorough holds neither: its cases are smaller, smoke/cases.py `_thorough_specs`).

    >>> covers("standard", "quick"), covers("thorough", "quick")
    (True, False)
    """
    if "off" in (level, other):
        return other == "off"
    return set(level_specs(other)) <= set(level_specs(level))


@dataclass(frozen=True, slots=True)
class Target:
    """One backend on one GPU: the cases the plan runs there, and the fingerprint they vet."""

    backend: BackendName
    gpu: GpuFacts
    fingerprint: str
    cases: tuple[SmokeCase, ...]

    @property
    def key(self) -> tuple[str, int | None, str | None]:
        return (self.backend.value, self.gpu.nvml_index, self.gpu.uuid)


@dataclass(frozen=True, slots=True)
class Vetting:
    """`fa4doctor_vetting_current` of one target."""

    backend: str
    nvml_index: int | None
    uuid: str | None
    current: bool


def targets(env: Environment, plan: RevetPlan) -> tuple[Target, ...]:
    """Every backend and GPU the plan has cases for: `plan_cases`, so only what the rules claim."""
    if plan.level == "off":
        return ()
    extra = [spec for _, spec in plan.specs]
    found = []
    for gpu in env.gpus:
        by_backend: dict[BackendName, list[SmokeCase]] = {}
        for case in plan_cases(env, plan.level, gpu=gpu, extra_specs=extra):
            by_backend.setdefault(case.backend, []).append(case)
        found += [Target(backend, gpu, fingerprint(backend, env, gpu), tuple(cases))
                  for backend, cases in by_backend.items()]
    return tuple(found)


def status(found: Iterable[Target], entries: Iterable[LedgerEntry]) -> tuple[Vetting, ...]:
    """Whether the ledger covers each target under its fingerprint."""
    index: dict[tuple, set[bool]] = {}  # (backend, fingerprint, class, direction) -> failed flags seen
    for e in entries:
        index.setdefault((e.backend, e.fingerprint, e.case_class, e.direction), set()).add(e.failed)
    return tuple(Vetting(t.backend.value, t.gpu.nvml_index, t.gpu.uuid,
                         all(_covered(t, case, index) for case in t.cases)) for t in found)


def _covered(target: Target, case: SmokeCase, index: dict[tuple, set[bool]]) -> bool:
    klass = case_class(case.spec)
    seen = [index.get((target.backend, target.fingerprint, klass, d), set()) for d in directions(case.spec)]
    # A failed forward leaves its backward skipped, and a skipped direction is not recorded
    # (smoke/evidence.py): the failure alone decides the call, so the case has been vetted.
    return all(seen) or any(True in flags for flags in seen)
