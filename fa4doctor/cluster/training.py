"""`agree(specs, group=None)`: the job's verdict from inside a training script, one collective.

Every rank of `group` must call it (it gathers every rank's `RankReport` with `all_gather_object`,
bounded by the group's timeout); each gets the same `Verdict`. With FA4DOCTOR_UNIFORM=1 it also
records, for each spec, every rank's eligible backends, so `attention()`'s first call of those
classes runs the best backend every rank can run without an exchange of its own, and later
exchanges use `group`. Without an initialised process group it judges this process alone.

>>> from fa4doctor.dispatch.spec import AttentionSpec
>>> from fa4doctor.environment import Environment
>>> verdict = agree([("cpu", AttentionSpec(device="cpu"))], env=Environment(hostname="n1"))
>>> verdict.world_size, verdict.specs[0].backend.value, verdict.specs[0].uniform.value
(1, 'sdpa', 'sdpa')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from fa4doctor.dispatch.agreement import RankReport, Verdict, build_verdict, rank_report, uniform_class
from fa4doctor.dispatch.default_specs import DEFAULT_SPECS
from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.environment import Environment
from fa4doctor.runtime import local_env, uniform

NamedSpecs = Sequence[tuple[str, AttentionSpec] | AttentionSpec]


def named(specs: NamedSpecs | None) -> list[tuple[str, AttentionSpec]]:
    """`specs` as (name, spec) pairs: bare specs are named spec1, spec2, ...; None: the defaults.

    >>> [name for name, _ in named([AttentionSpec(), ("mine", AttentionSpec())])]
    ['spec1', 'mine']
    """
    if specs is None:
        return list(DEFAULT_SPECS)
    found = []
    for number, item in enumerate(specs, 1):
        if isinstance(item, AttentionSpec):
            found.append((f"spec{number}", item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], AttentionSpec):
            found.append((str(item[0]), item[1]))
        else:
            raise TypeError(f"specs: item {number} is {type(item).__name__}; expected an AttentionSpec "
                            f"or a (name, AttentionSpec) pair")
    return found


def training_environment() -> Environment:
    """What `attention()` decides from in this process, with the driver read (it is in the stack)."""
    import torch

    env = local_env.environment(need_gpus=torch.cuda.is_available())
    if env.gpus and env.driver.driver_version is None:
        try:
            env = replace(env, driver=local_env.read_driver())
        except Exception:  # noqa: BLE001 (no NVML: the driver stays unknown, nothing else changes)
            pass
    return env


def agree(specs: NamedSpecs | None = None, group: Any = None, *, env: Environment | None = None,
          policy: Policy | None = None) -> Verdict:
    """The verdict of every rank of `group` (default: the whole job) on `specs` (default: the default
    specs). `env` replaces this process's environment (a snapshot, in tests); `policy` the
    FA4DOCTOR_* policy variables. A collective: every rank must call it."""
    import torch.distributed as dist

    specs = named(specs)
    env = training_environment() if env is None else env
    policy = Policy.from_env() if policy is None else policy
    up = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank(group) if up else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    mine = rank_report(rank, env, specs, policy, local_rank=local_rank, node=env.hostname or os.uname().nodename,
                       source="runtime")
    reports: list[RankReport] = uniform.gather(mine, group) if up else [mine]
    verdict = build_verdict(reports, world_size=len(reports))
    if uniform.requested():
        uniform.use_group(group)
        uniform.seed({uniform_class(spec): tuple(next(c.eligible for c in r.choices if c.spec == name)
                                                  for r in sorted(reports, key=lambda r: r.rank))
                      for name, spec in specs})
    return verdict
