"""One verdict for a whole job: what every rank would run, and the ranks that differ, from rank reports.

Pure rules over what each rank reports (`RankReport`: its node's software stack and its decision
for each spec), so the verdict is the same whoever moved the reports (`fa4doctor cluster` through
the job's store, `fa4doctor.dispatch.agree` through a collective). A `Stack` is the parts of a node
that make ranks run different kernels: the FA versions, cutlass-dsl, torch and its CUDA, the driver,
the GPU model, FA4's kernel knobs (the parts `vetting.fingerprint` hashes) and this node's recorded
smoke failures. FA4DOCTOR_UNIFORM's choice is `common_backend`: the first backend in priority order
that every rank can run.

>>> from fa4doctor.environment import Environment
>>> from fa4doctor.dispatch.spec import AttentionSpec
>>> specs = [("cpu", AttentionSpec(device="cpu"))]
>>> reports = [rank_report(r, Environment(hostname="n1"), specs) for r in range(2)]
>>> verdict = build_verdict(reports, world_size=3)
>>> verdict.missing, verdict.specs[0].backend.value, verdict.exit_code
((2,), 'sdpa', 3)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.reasons import Decision, Reason, ReasonCode
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import fingerprint
from fa4doctor.environment import Environment, GpuFacts
from fa4doctor.exit_codes import EXIT_OK, EXIT_PROBLEMS
from fa4doctor.names import BackendName
from fa4doctor.records import digest, to_plain

SCHEMA = "fa4doctor.cluster"
SCHEMA_VERSION = 1
CUTLASS_DSL = "nvidia-cutlass-dsl"  # FA4's CuTe DSL compiler, a run-time dependency (its metadata)
# The parts in the order a verdict shows them, with the words it uses.
PARTS = {"fa4": "FA4", "fa3": "FA3", "fa2": "FA2", "cutlass_dsl": "cutlass-dsl", "fa4_dependencies": "FA4 deps",
         "torch": "torch", "cuda": "torch CUDA", "driver": "driver", "gpu_model": "GPU",
         "fa4_knobs": "FA4 knobs", "smoke_failures": "smoke failures"}


@dataclass(frozen=True, slots=True)
class Stack:
    """What makes two ranks run different kernels (None: not installed or unknown)."""

    fa4: str | None = None
    fa3: str | None = None
    fa2: str | None = None
    cutlass_dsl: str | None = None
    fa4_dependencies: tuple[str, ...] = ()  # FA4's other run-time dependencies, "name==version"
    torch: str | None = None
    cuda: str | None = None  # the CUDA torch was built with
    driver: str | None = None
    gpu_model: str | None = None
    fa4_knobs: tuple[str, ...] = ()  # FA4 environment variables that change kernels, "NAME=value"
    smoke_failures: tuple[str, ...] = ()  # failed ledger entries under the current fingerprint

    @property
    def id(self) -> str:
        """The stack's fingerprint: equal stacks, equal ids."""
        return digest(to_plain(self), length=12)

    def text(self, part: str) -> str:
        """One part as a verdict shows it ("not installed", "none", a version, a list)."""
        value = getattr(self, part)
        if isinstance(value, tuple):
            return ", ".join(value) if value else "none"
        return value if value is not None else ("not installed" if part in ("fa4", "fa3", "fa2") else "unknown")


def stack_of(env: Environment, gpu: GpuFacts | None) -> Stack:
    """The `Stack` of a rank that runs on `gpu` (None: no GPU visible).

    >>> stack_of(Environment(), None).text("fa4")
    'not installed'
    """
    versions = {b.backend: b.version for b in env.backends if b.installed}
    fa4 = env.backend(BackendName.FA4)
    deps = dict(fa4.dependencies) if fa4 is not None and fa4.installed else {}
    failures = ()
    if gpu is not None and env.ledger:
        current = {b: fingerprint(b, env, gpu) for b in {e.backend for e in env.ledger}}
        failures = tuple(sorted({f"{e.backend.value} {e.case} {e.direction}: {e.outcome}" for e in env.ledger
                                 if e.failed and e.fingerprint == current[e.backend]}))
    return Stack(fa4=versions.get(BackendName.FA4), fa3=versions.get(BackendName.FA3),
                 fa2=versions.get(BackendName.FA2), cutlass_dsl=deps.pop(CUTLASS_DSL, None),
                 fa4_dependencies=tuple(sorted(f"{k}=={v}" for k, v in deps.items())),
                 torch=env.torch.version, cuda=env.torch.cuda, driver=env.driver.driver_version,
                 gpu_model=gpu.name if gpu is not None else None,
                 fa4_knobs=tuple(sorted(f"{k.name}={k.value}" for k in env.knobs if k.changes_kernels)),
                 smoke_failures=failures)


@dataclass(frozen=True, slots=True)
class SpecChoice:
    """One rank's decision for one named spec."""

    spec: str
    preferred: BackendName
    chosen: BackendName | None
    eligible: tuple[BackendName, ...]
    outcome: str  # Decision.outcome: preferred, fell_back, no_backend, ...
    why: str = ""  # the preferred backend's first reason, when it is not chosen


@dataclass(frozen=True, slots=True)
class RankReport:
    """What one rank says about itself; `error` instead of facts when it could not gather them."""

    rank: int
    node: str
    local_rank: int = 0
    gpu: int | None = None  # the CUDA ordinal judged
    gpus_on_node: int = 0
    stack: Stack | None = None
    choices: tuple[SpecChoice, ...] = ()
    source: str = "probe"  # probe, shared (from the node's local rank 0), snapshot or runtime
    error: str | None = None


def eligible(decision: Decision) -> tuple[BackendName, ...]:
    """The backends the decision found able to run the call (the policy applied), best first."""
    return tuple(name for name, found in decision.reasons if not found)


def rank_gpu(env: Environment, local_rank: int = 0) -> GpuFacts | None:
    """The GPU a rank uses: `cuda:<local_rank>` as torchrun assigns them, else `cuda:0` (a launcher
    that gives each rank one GPU through CUDA_VISIBLE_DEVICES), else None."""
    return env.gpu(local_rank) or env.gpu(0)


def rank_report(rank: int, env: Environment, specs: Sequence[tuple[str, AttentionSpec]],
                policy: Policy = Policy(), *, local_rank: int = 0, node: str | None = None,
                source: str = "probe") -> RankReport:
    """This rank's report: its stack and its decision for each spec, on its GPU."""
    gpu = rank_gpu(env, local_rank)
    index = gpu.cuda_index if gpu is not None else 0
    choices = []
    for name, spec in specs:
        decision = decide(spec, env, policy, index)
        first = decision.reasons_for(decision.preferred)
        choices.append(SpecChoice(name, decision.preferred, decision.chosen, eligible(decision), decision.outcome,
                                  str(first[0]) if decision.fell_back and first else ""))
    return RankReport(rank=rank, node=node or env.hostname or "unknown", local_rank=local_rank,
                      gpu=gpu.cuda_index if gpu is not None else None, gpus_on_node=len(env.gpus),
                      stack=stack_of(env, gpu), choices=tuple(choices), source=source)


def common_backend(sets: Sequence[Sequence[BackendName]], order: Sequence[BackendName] = tuple(BackendName)
                   ) -> BackendName | None:
    """The first backend in `order` that every rank can run (each of `sets` is one rank's), or None.

    >>> F = BackendName
    >>> common_backend([(F.FA4, F.FA3, F.SDPA), (F.FA3, F.SDPA), (F.FA4, F.FA3, F.FA2, F.SDPA)]).value
    'fa3'
    >>> common_backend([(F.FA4,), (F.FA2,)]) is None
    True
    """
    return next((b for b in order if all(b in s for s in sets)), None)


def uniform_decision(local: Decision, sets: Sequence[Sequence[BackendName]], rank: int) -> Decision:
    """`local` (this rank's decision) with the best backend every rank can run chosen instead, as
    `sets` say (`sets[r]`: rank r's eligible backends when the job agreed). A backend this rank can
    run but another cannot gets a `not_on_every_rank` reason naming those ranks.

    >>> from fa4doctor.dispatch.reasons import Decision
    >>> F = BackendName
    >>> local = Decision(preferred=F.FA4, chosen=F.FA4, reasons=((F.FA4, ()), (F.SDPA, ())))
    >>> agreed = uniform_decision(local, [(F.FA4, F.SDPA), (F.SDPA,)], rank=0)
    >>> agreed.chosen.value, agreed.fallback_code.value
    ('sdpa', 'not_on_every_rank')
    """
    reasons = []
    for name, found in local.reasons:
        lacking = [r for r, s in enumerate(sets) if r != rank and name not in s]
        if not found and lacking:
            found = (Reason(ReasonCode.NOT_ON_EVERY_RANK, f"FA4DOCTOR_UNIFORM=1 and rank(s) "
                            f"{_ranks(lacking)} cannot run it"),)
        reasons.append((name, found))
    return replace(local, chosen=common_backend(sets, [n for n, _ in local.reasons]), reasons=tuple(reasons))


def uniform_class(spec: AttentionSpec) -> tuple:
    """What FA4DOCTOR_UNIFORM decides once for: every field of the spec but the sequence lengths,
    which the rules read only as how they compare (dispatch/backends: seqlen_q against seqlen_kv,
    and a decode's single query), so varying batch lengths never make ranks decide again."""
    parts = tuple((f.name, getattr(spec, f.name)) for f in fields(spec)
                  if f.name not in ("seqlen_q", "seqlen_kv", "device"))
    q, kv = spec.seqlen_q, spec.seqlen_kv
    return parts + (("device", spec.device.split(":")[0]), ("decode", q == 1), ("order", (q > kv) - (q < kv)))


@dataclass(frozen=True, slots=True)
class Group:
    """Ranks whose stacks are identical."""

    stack_id: str
    ranks: tuple[int, ...]
    nodes: tuple[str, ...]
    stack: Stack


@dataclass(frozen=True, slots=True)
class Difference:
    """One part on which the ranks differ: each value with the ranks that have it."""

    part: str
    values: tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class Outlier:
    """A rank that would run another backend than most ranks for a spec, and why."""

    rank: int
    chosen: BackendName | None
    why: str


@dataclass(frozen=True, slots=True)
class SpecAgreement:
    """One spec across the job: the backend most ranks pick, the ranks that pick another, and the
    best backend every rank can run (what FA4DOCTOR_UNIFORM=1 makes every rank use)."""

    spec: str
    preferred: BackendName
    backend: BackendName | None
    ranks: tuple[int, ...]
    others: tuple[Outlier, ...] = ()
    uniform: BackendName | None = None

    @property
    def healthy(self) -> bool:
        return not self.others and self.backend is self.preferred


@dataclass(frozen=True, slots=True)
class Verdict:
    """The job's verdict. Healthy (exit 0) when every rank answered with facts, all stacks are
    identical, and for every spec every rank picks the preferred backend; else exit 3."""

    world_size: int
    answered: tuple[int, ...]
    missing: tuple[int, ...]
    failed: tuple[tuple[int, str], ...]
    nodes: int
    gpus: int
    groups: tuple[Group, ...]
    differences: tuple[Difference, ...]
    specs: tuple[SpecAgreement, ...]
    odd_ranks: tuple[int, ...]
    timeout_s: float | None = None
    collective: str | None = None  # how the job's collective check went (`fa4doctor cluster`)
    collective_ok: bool | None = None

    @property
    def healthy(self) -> bool:
        return (not self.missing and not self.failed and len(self.groups) <= 1 and self.collective_ok is not False
                and all(s.healthy for s in self.specs))

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.healthy else EXIT_PROBLEMS

    def to_plain(self) -> dict:
        """The `fa4doctor cluster --json` object (schema `fa4doctor.cluster`, version 1)."""
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **to_plain(self),
                "healthy": self.healthy, "exit_code": self.exit_code}


def _ranks(ranks: Sequence[int]) -> str:
    return ",".join(str(r) for r in ranks)


def _groups(reports: Sequence[RankReport]) -> tuple[Group, ...]:
    by_id: dict[str, list[RankReport]] = {}
    for report in reports:
        by_id.setdefault(report.stack.id, []).append(report)
    groups = [Group(key, tuple(r.rank for r in mine), tuple(dict.fromkeys(r.node for r in mine)), mine[0].stack)
              for key, mine in by_id.items()]
    return tuple(sorted(groups, key=lambda g: (-len(g.ranks), g.ranks)))  # the largest first


def _differences(reports: Sequence[RankReport]) -> tuple[Difference, ...]:
    found = []
    for part in PARTS:
        values: dict[str, list[int]] = {}
        for report in reports:
            values.setdefault(report.stack.text(part), []).append(report.rank)
        if len(values) > 1:
            found.append(Difference(part, tuple((v, tuple(r)) for v, r in values.items())))
    return tuple(found)


def _agreement(name: str, choices: Sequence[tuple[int, SpecChoice]]) -> SpecAgreement:
    order = list(BackendName)
    counts = Counter(c.chosen for _, c in choices)
    # the most ranks' choice; a tie goes to the better backend ("none" last)
    backend = min(counts, key=lambda b: (-counts[b], order.index(b) if b is not None else len(order)))
    preferred = Counter(c.preferred for _, c in choices).most_common(1)[0][0]
    others = []
    for rank, choice in choices:
        if choice.chosen is not backend:
            why = choice.why or (f"{backend.value} not eligible here" if backend is not None else "")
            others.append(Outlier(rank, choice.chosen, why))
    return SpecAgreement(name, preferred, backend, tuple(r for r, c in choices if c.chosen is backend),
                         tuple(others), common_backend([c.eligible for _, c in choices]))


def build_verdict(reports: Sequence[RankReport], world_size: int, *, timeout_s: float | None = None) -> Verdict:
    """The verdict over the reports that arrived; ranks below `world_size` without one are missing."""
    reports = sorted({r.rank: r for r in reports}.values(), key=lambda r: r.rank)
    good = [r for r in reports if r.error is None and r.stack is not None]
    failed = tuple((r.rank, r.error or "no facts") for r in reports if r not in good)
    missing = tuple(sorted(set(range(world_size)) - {r.rank for r in reports}))
    groups = _groups(good)
    names = list(dict.fromkeys(c.spec for r in good for c in r.choices))
    specs = tuple(_agreement(n, [(r.rank, c) for r in good for c in r.choices if c.spec == n]) for n in names)
    odd = set(missing) | {rank for rank, _ in failed} | {o.rank for s in specs for o in s.others}
    odd |= {rank for g in groups[1:] for rank in g.ranks}
    gpus = sum({r.node: r.gpus_on_node for r in good}.values())
    return Verdict(world_size=world_size, answered=tuple(r.rank for r in reports), missing=missing, failed=failed,
                   nodes=len({r.node for r in good}), gpus=gpus, groups=groups, differences=_differences(good),
                   specs=specs, odd_ranks=tuple(sorted(odd)), timeout_s=timeout_s)
