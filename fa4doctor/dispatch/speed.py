"""This node's measured speed as dispatch rules: the class a speed record is evidence about, and
the backend `FA4DOCTOR_POLICY=fastest` picks from the records.

**Shape class.** `fa4doctor bench` measures classes of calls, not each exact call. A class is the
call's `CaseClass` (dtype, head dims, mask, window, GQA, decode: what smoke vets), its sequence
lengths each rounded to the nearest power of two in ratio (`seqlen_bucket`: one class spans
1/sqrt(2) to sqrt(2) times its length; one query token, a decode, stays 1), and the features that
send a backend down another code path (softcap, ALiBi, a sink, dropout, a deterministic backward,
variable length, ...). Batch and head counts are not in it: `bench` fills the GPU at each length
with a fixed token budget (docs/bench.md), and a call with far fewer tokens may rank otherwise.

**The choice.** Among the eligible backends that this node vetted for the call's class (passing
smoke evidence in every direction it runs, `vetting.evidence(...).proven`) and measured for its
shape class and direction (a training call: forward+backward; inference: forward), the fastest;
one within `TIE` of the fastest that comes earlier in FA4 > FA3 > FA2 > SDPA wins the tie. Where no
eligible backend is both vetted and measured, the fixed order decides, as under `priority`. Records
count only under the backend's current fingerprint, as smoke's do, and the median over the GPUs
measured is used.

**SDPA's kernel.** SDPA is measured as torch runs it by itself and kept to each of its kernels
(cudnn, flash, efficient). Keeping torch to one kernel costs the adapter an `sdpa_kernel` context
per call (`RESTRICT_MS`), so SDPA is kept to its fastest kernel only where that kernel beats torch's
own choice by more than that cost; where the adapter keeps a kernel out anyway (`sdpa_excluded`),
the restriction is already paid and the fastest allowed kernel is always used.

>>> seqlen_bucket(3000), seqlen_bucket(1448), seqlen_bucket(1449), seqlen_bucket(1)
(4096, 1024, 2048, 1)
>>> shape_class(AttentionSpec(seqlen_q=5000, softcap=30.0)).features
('softcap',)
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from fa4doctor.dispatch.backends.base import FEATURE_FLAGS, _uses
from fa4doctor.dispatch.backends.sdpa import KERNELS
from fa4doctor.dispatch.reasons import Measured
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import case_class, evidence, fingerprint
from fa4doctor.environment import Environment, GpuFacts, ShapeClass
from fa4doctor.names import BackendName

# Two backends whose medians differ by less than this are tied, and the fixed order decides: below
# the 3% within which issue 15 asks `fastest` to land of the best backend, so a tie never costs more.
TIE = 0.02
# What keeping SDPA to one kernel adds to a call: `sdpa_kernel` sets and restores every kernel flag,
# 13.7 us a call (runtime/adapters/sdpa.py `restricted`, measured on the CPU VM with torch 2.13).
RESTRICT_MS = 0.0137
FWD, FWD_BWD = "fwd", "fwd_bwd"


def seqlen_bucket(n: int) -> int:
    """`n` rounded to the nearest power of two in ratio (exact integer arithmetic); 0 and 1 stay."""
    if n <= 1:
        return n
    low = 1 << (n.bit_length() - 1)
    return low << 1 if n * n >= 2 * low * low else low


def features(spec: AttentionSpec) -> tuple[str, ...]:
    """What the call uses beyond its `CaseClass` that changes a backend's code path, sorted."""
    used = {name for name, _, _ in FEATURE_FLAGS if name != "window" and _uses(spec, name)}
    if spec.varlen:
        used.add("varlen")
    if spec.num_splits != 1:
        used.add("num_splits")
    return tuple(sorted(used))


def shape_class(spec: AttentionSpec) -> ShapeClass:
    """The class of calls one speed record of `spec` is evidence about (module docstring)."""
    return ShapeClass(case_class=case_class(spec), seqlen_q=seqlen_bucket(spec.seqlen_q),
                      seqlen_kv=seqlen_bucket(spec.seqlen_kv), features=features(spec))


def direction(spec: AttentionSpec) -> str:
    """The figure a call needs: forward+backward when it trains, else the forward."""
    return FWD_BWD if spec.training else FWD


def vetted(backend: BackendName, spec: AttentionSpec, env: Environment, gpu: GpuFacts) -> bool:
    """Passing smoke evidence for the call's class in every direction it runs."""
    return all(found.proven for found in evidence(backend, spec, env, gpu))


def figures(backend: BackendName, spec: AttentionSpec, env: Environment, gpu: GpuFacts,
            proven: bool) -> tuple[Measured, ...]:
    """The backend's figures for the call's shape class and direction, one per SDPA kernel measured
    (None first, then `KERNELS` order), each the median over the GPUs measured."""
    current, mine, way = fingerprint(backend, env, gpu), shape_class(spec), direction(spec)
    found: dict[str | None, list] = {}
    for entry in env.speed:
        if (entry.backend is backend and entry.fingerprint == current and entry.direction == way
                and entry.shape_class == mine):
            found.setdefault(entry.kernel, []).append(entry)
    rank = {kernel: i for i, kernel in enumerate((None, *KERNELS))}
    return tuple(_measured(backend, kernel, entries, proven)
                 for kernel, entries in sorted(found.items(), key=lambda item: rank.get(item[0], len(rank))))


def _measured(backend: BackendName, kernel: str | None, entries: list, proven: bool) -> Measured:
    rates = [e.tflops for e in entries if e.tflops is not None]
    return Measured(backend, kernel, statistics.median(e.median_ms for e in entries),
                    statistics.median(rates) if rates else None, proven, len(entries))


def sdpa_plan(found: Sequence[Measured], excluded: Sequence[str]) -> tuple[float, str | None] | None:
    """(SDPA's time for the call, the kernel to keep torch to or None), from its figures; None when
    none applies. A kernel the adapter excludes never counts; nor does torch's own choice then, which
    was measured without the exclusion (module docstring)."""
    kernels = [f for f in found if f.kernel is not None and f.kernel not in excluded]
    own = None if excluded else next((f for f in found if f.kernel is None), None)
    best = min(kernels, key=lambda f: f.median_ms, default=None)
    if best is None:
        return (own.median_ms, None) if own else None
    cost = 0.0 if excluded else RESTRICT_MS
    if own is not None and own.median_ms <= best.median_ms + cost:
        return own.median_ms, None
    return best.median_ms + cost, best.kernel


@dataclass(frozen=True, slots=True)
class SpeedChoice:
    """What the records say: the backend to run (None: nothing eligible is vetted and measured, the
    fixed order decides), SDPA's kernel when that backend is SDPA, and every figure consulted."""

    chosen: BackendName | None
    sdpa_kernel: str | None
    measured: tuple[Measured, ...]


def choose(spec: AttentionSpec, env: Environment, gpu: int, eligible: Sequence[BackendName],
           excluded: Sequence[str] = ()) -> SpeedChoice:
    """The fastest vetted backend among `eligible` (in priority order) for `spec` on CUDA ordinal
    `gpu`; `excluded` are the SDPA kernels the adapter keeps torch from (`Decision.sdpa_excluded`)."""
    facts = env.gpu(gpu) if spec.on_cuda else None
    if facts is None or not env.speed:
        return SpeedChoice(None, None, ())
    measured, times = [], {}
    for name in eligible:
        found = figures(name, spec, env, facts, vetted(name, spec, env, facts))
        measured += found
        plan = (sdpa_plan(found, excluded) if name is BackendName.SDPA
                else next(((f.median_ms, None) for f in found if f.kernel is None), None))
        if plan is not None and found[0].vetted:
            times[name] = plan
    if not times:
        return SpeedChoice(None, None, tuple(measured))
    best = min(ms for ms, _ in times.values())
    chosen = next(name for name in eligible if name in times and times[name][0] <= best * (1 + TIE))
    return SpeedChoice(chosen, times[chosen][1], tuple(measured))


def kept_out(sdpa_excluded: Sequence[tuple[str, object]], sdpa_kernel: str | None) -> tuple[str, ...]:
    """The SDPA kernels the adapter keeps torch from: the decision's exclusions, and, where `fastest`
    keeps SDPA to one kernel, every other fused one (math stays: `allowed_backends` always keeps it).

    >>> kept_out((), "cudnn")
    ('flash', 'efficient')
    """
    out = [kernel for kernel, _ in sdpa_excluded]
    if sdpa_kernel is not None:
        out += [k for k in KERNELS if k not in (sdpa_kernel, "math", *out)]
    return tuple(out)
