"""FA4DOCTOR_UNIFORM=1: every rank of a job runs the same backend for a call, the best all can run.

Opt-in, and only where a torch.distributed process group is initialised with more than one rank;
otherwise `attention()` decides per process, as always. The choice is made once per class of calls
(`dispatch.agreement.uniform_class`: the spec without its sequence lengths), collectively: at
`fa4doctor.dispatch.agree(specs)` for the specs it is given, else at the first call of the class,
when each rank's plan-time `_new_plan` gathers every rank's eligible backends
(`all_gather_object` over the default group, or the group `agree` was given). Nothing runs per call:
the hit path only reads the plan. Each rank must make its first call of a class in the same order,
as SPMD training does; a later call of a decided class never exchanges again (where the agreed
backend cannot run it on this rank, that rank decides alone and logs a warning).

>>> requested({"FA4DOCTOR_UNIFORM": "1"}), requested({})
(True, False)
>>> active({})
False
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from fa4doctor.dispatch.agreement import eligible, uniform_class, uniform_decision
from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.reasons import BackendName, Decision, PolicyError
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.environment import Environment

ENV_UNIFORM = "FA4DOCTOR_UNIFORM"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}
log = logging.getLogger("fa4doctor.dispatch")
_lock = threading.Lock()
_agreed: dict[tuple, tuple[tuple[BackendName, ...], ...]] = {}  # class -> each rank's eligible backends
_group: Any = None  # None: the default group
exchanges = 0  # plan-time collectives this process took part in (tests and logs count them)


def requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether FA4DOCTOR_UNIFORM asks for one backend on every rank (1/0, like FA4DOCTOR_STRICT)."""
    value = (os.environ if environ is None else environ).get(ENV_UNIFORM, "").strip().lower()
    if value not in _TRUE | _FALSE:
        raise PolicyError(f"{ENV_UNIFORM}: expected 1 or 0, got {value!r}")
    return value in _TRUE


def _dist() -> Any:
    """torch.distributed where a process group is initialised, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def active(environ: Mapping[str, str] | None = None) -> bool:
    """Requested, and a process group of more than one rank is initialised."""
    if not requested(environ):
        return False
    dist = _dist()
    return dist is not None and dist.get_world_size(_group) > 1


def use_group(group: Any) -> None:
    """Exchange over `group` from now on (`agree(specs, group)` sets it; None: the default group)."""
    global _group
    _group = group


def seed(classes: Mapping[tuple, Sequence[Sequence[BackendName]]]) -> None:
    """Record choices every rank already agreed on (`agree()` does): their first calls exchange nothing."""
    with _lock:
        for key, sets in classes.items():
            _agreed.setdefault(key, tuple(tuple(s) for s in sets))


def gather(payload: Any, group: Any = None) -> list[Any]:
    """Every rank's `payload`, in rank order (a collective: every rank of `group` must call it)."""
    dist = _dist()
    if dist is None:
        return [payload]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, payload, group=group)
    return out


def _exchange(key: tuple, local: Decision) -> tuple[tuple[BackendName, ...], ...]:
    global exchanges
    answers = gather((key, eligible(local)), _group)
    exchanges += 1
    if any(k != key for k, _ in answers):  # the intersection still holds: each set is its own rank's call
        log.warning("fa4doctor: FA4DOCTOR_UNIFORM=1: ranks reached different first calls at this exchange; "
                    "their first calls of each class should come in the same order")
    return tuple(tuple(s) for _, s in answers)


def select(spec: AttentionSpec, env: Environment, policy: Policy, gpu: int = 0) -> Decision:
    """`dispatch.select` with the backend every rank can run; raises what select would for that decision.
    Every rank computes its own decision and exchanges before any raises, so no rank is left waiting."""
    local = decide(spec, env, policy, gpu)
    key = uniform_class(spec)
    with _lock:
        sets = _agreed.get(key)
        if sets is None:
            sets = _agreed[key] = _exchange(key, local)
    decision = uniform_decision(local, sets, _dist().get_rank(_group))
    if decision.chosen is not None and decision.chosen not in eligible(local):
        # this rank can no longer run what the job agreed on (an import failed since): alone, and loud
        log.warning("fa4doctor: FA4DOCTOR_UNIFORM=1: the agreed %s cannot run %s on this rank; deciding alone",
                    decision.chosen.value, spec.short())
        decision = local
    elif decision.chosen is not local.chosen:
        log.warning("fa4doctor: FA4DOCTOR_UNIFORM=1: %s runs on %s on every rank (this rank alone would run %s)",
                    spec.short(), decision.chosen.value if decision.chosen else "nothing",
                    local.chosen.value if local.chosen else "nothing")
    error = decision.error
    if error is not None:
        raise error
    return decision


def reset() -> None:
    """Forget agreed choices and the group (tests; every rank must do it, or their exchanges diverge)."""
    global _group, exchanges
    with _lock:
        _agreed.clear()
    _group, exchanges = None, 0
