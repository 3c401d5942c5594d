"""`select`: the one decision every part of fa4doctor asks for.

Pure and cached: the same spec, environment, policy and GPU always give the same `Decision`.
Every backend is evaluated, so a decision explains itself. Under `FA4DOCTOR_POLICY=fastest` the
eligible backends are ranked by this node's speed records (the environment's, from the ledger:
`dispatch/speed.py`), read here, once per plan, never timed.

>>> from fa4doctor.environment import Environment
>>> decision = select(AttentionSpec(device="cpu"), Environment())
>>> decision.chosen.value, decision.fallback_code.value
('sdpa', 'not_installed')
"""

from __future__ import annotations

import functools

from fa4doctor.dispatch.backends import PRIORITY, Backend
from fa4doctor.dispatch.backends.sdpa import excluded_kernels
from fa4doctor.dispatch.policy import FASTEST, Policy
from fa4doctor.dispatch.speed import SpeedChoice, choose
from fa4doctor.dispatch.reasons import BackendName, Decision, Reason, ReasonCode
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.environment import Environment

_DEFAULT_POLICY = Policy()


@functools.lru_cache(maxsize=1024)
def decide(spec: AttentionSpec, env: Environment, policy: Policy = _DEFAULT_POLICY, gpu: int = 0,
           backends: tuple[type[Backend], ...] = PRIORITY) -> Decision:
    """The decision without the policy's errors: what `explain` shows even when `select` would raise."""
    reasons, advisories = [], []
    for backend in backends:
        found = backend.not_supported_reasons(spec, env, gpu)
        if backend.NAME in policy.disabled or (policy.force and backend.NAME is not policy.force):
            why = "forced to " + policy.force.value if policy.force else "disabled by FA4DOCTOR_DISABLE"
            found = [Reason(ReasonCode.DISABLED_BY_POLICY, why), *found]
        reasons.append((backend.NAME, tuple(found)))
        advisories.append((backend.NAME, tuple(backend.advisories(spec, env, gpu))))
    excluded = excluded_kernels(spec, env, gpu, policy.disabled)
    eligible = [name for name, found in reasons if not found]
    fast = _by_speed(spec, env, policy, gpu, eligible, excluded)
    return Decision(preferred=_preferred(policy, backends), chosen=fast.chosen or next(iter(eligible), None),
                    reasons=tuple(reasons), advisories=tuple(a for a in advisories if a[1]),
                    sdpa_excluded=excluded, forced=policy.force, strict=policy.strict, order=policy.order,
                    measured=fast.measured, sdpa_kernel=fast.sdpa_kernel)


def _by_speed(spec: AttentionSpec, env: Environment, policy: Policy, gpu: int, eligible: list[BackendName],
              excluded: tuple) -> SpeedChoice:
    """The `fastest` policy's pick (chosen None: the fixed order decides). A forced backend is the
    only one allowed, so there is nothing to rank."""
    if policy.order != FASTEST or policy.force is not None:
        return SpeedChoice(None, None, ())
    return choose(spec, env, gpu, eligible, tuple(kernel for kernel, _ in excluded))


def select(spec: AttentionSpec, env: Environment, policy: Policy = _DEFAULT_POLICY, gpu: int = 0,
           backends: tuple[type[Backend], ...] = PRIORITY) -> Decision:
    """Choose the first backend in priority order (FA4 > FA3 > FA2 > SDPA) that can run `spec`
    (under `FA4DOCTOR_POLICY=fastest`, the vetted one this node measured fastest, if any).

    Raises `BackendNotEligible` when the policy forces a backend that cannot run the call,
    `FallbackRefused` in strict mode when the preferred backend cannot, and `NoBackendAvailable`
    when nothing the policy allows can.
    """
    decision = decide(spec, env, policy, gpu, backends)
    error = decision.error
    if error is not None:
        raise error
    return decision


def _preferred(policy: Policy, backends: tuple[type[Backend], ...]) -> BackendName:
    if policy.force is not None:
        return policy.force
    allowed = [b.NAME for b in backends if b.NAME not in policy.disabled]
    return allowed[0] if allowed else backends[0].NAME


def cache_clear() -> None:
    """Forget cached decisions (tests do this between cases)."""
    decide.cache_clear()
