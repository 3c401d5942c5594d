"""Why a backend was not used: closed reason codes, reasons, decisions and the errors that carry them.

A `ReasonCode` value is also a Prometheus label value (`fa4doctor_dispatch_fallbacks_total{reason}`),
so the set is closed and every value is a short snake_case word; the human text lives in `detail`.

>>> decision = Decision(preferred=BackendName.FA4, chosen=BackendName.SDPA, reasons=(
...     (BackendName.FA4, (Reason(ReasonCode.ARCH_UNSUPPORTED, "compute capability 7.5"),)),
...     (BackendName.SDPA, ())))
>>> decision.fell_back, decision.fallback_code.value
(True, 'arch_unsupported')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from fa4doctor.names import BackendName, DispatchError, PolicyError  # noqa: F401 (re-exported)
from fa4doctor.records import to_plain


class ReasonCode(StrEnum):
    # installation and environment
    NOT_INSTALLED = "not_installed"
    IMPORT_FAILED = "import_failed"
    VERSION_TOO_OLD = "version_too_old"
    VERSION_TOO_NEW = "version_too_new"
    VERSION_WRONG_GENERATION = "version_wrong_generation"
    VERSION_INVALID = "version_invalid"
    NOT_CUDA = "not_cuda"
    NO_GPU = "no_gpu"
    ARCH_UNSUPPORTED = "arch_unsupported"
    BACKWARD_UNSUPPORTED = "backward_unsupported"
    SMOKE_FAILED = "smoke_failed"
    DISABLED_BY_POLICY = "disabled_by_policy"
    NOT_ON_EVERY_RANK = "not_on_every_rank"  # FA4DOCTOR_UNIFORM=1: another rank of the job cannot run it
    # the call's shape and features
    DTYPE_UNSUPPORTED = "dtype_unsupported"
    FP8_UNSUPPORTED = "fp8_unsupported"
    HEAD_DIM_UNSUPPORTED = "head_dim_unsupported"
    GQA_UNSUPPORTED = "gqa_unsupported"
    FORMAT_UNSUPPORTED = "format_unsupported"
    VARLEN_UNSUPPORTED = "varlen_unsupported"
    CAUSAL_ALIGNMENT = "causal_alignment"
    MASK_UNSUPPORTED = "mask_unsupported"
    BIAS_UNSUPPORTED = "bias_unsupported"
    WINDOW_UNSUPPORTED = "window_unsupported"
    DROPOUT_UNSUPPORTED = "dropout_unsupported"
    ALIBI_UNSUPPORTED = "alibi_unsupported"
    SOFTCAP_UNSUPPORTED = "softcap_unsupported"
    SINK_UNSUPPORTED = "sink_unsupported"
    DETERMINISTIC_UNSUPPORTED = "deterministic_unsupported"
    KV_CACHE_UNSUPPORTED = "kv_cache_unsupported"
    CONTEXT_PARALLEL_UNSUPPORTED = "context_parallel_unsupported"
    NUM_SPLITS_UNSUPPORTED = "num_splits_unsupported"
    KNOWN_BUG = "known_bug"
    # advisories: never block, shown next to an eligible backend
    VERSION_BELOW_RECOMMENDED = "version_below_recommended"
    EXPERIMENTAL_ARCH = "experimental_arch"
    KNOWN_BUG_LIFTED = "known_bug_lifted"  # this node's smoke pass outranks the known-bug table


@dataclass(frozen=True, slots=True)
class Reason:
    code: ReasonCode
    detail: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.detail}"


Reasons = tuple[Reason, ...]


def kernel_label(backend: str, kernel: str | None) -> str:
    """How a speed figure is named everywhere (bench, explain, the report): `fa4`, `sdpa cudnn`, or
    `sdpa (torch's choice)` for SDPA left to pick its own kernel.

    >>> kernel_label("sdpa", None), kernel_label("sdpa", "cudnn"), kernel_label("fa4", None)
    ("sdpa (torch's choice)", 'sdpa cudnn', 'fa4')
    """
    if kernel:
        return f"{backend} {kernel}"
    return backend + (" (torch's choice)" if backend == BackendName.SDPA.value else "")


@dataclass(frozen=True, slots=True)
class Measured:
    """One figure behind a `fastest` decision: a backend's (or one SDPA kernel's) median time for
    the call's shape class and direction on this node, over `records` speed records (one per GPU
    measured; the median of their medians), and whether the backend is vetted for the call."""

    backend: BackendName
    kernel: str | None  # SDPA's kernel the call is kept to; None: the backend as it runs by itself
    median_ms: float
    tflops: float | None
    vetted: bool
    records: int = 1

    @property
    def label(self) -> str:
        return kernel_label(self.backend.value, self.kernel)


@dataclass(frozen=True, slots=True)
class Decision:
    """What `select` decided: every backend's reasons in priority order, and the one chosen.

    `reasons` holds every backend evaluated, eligible ones with an empty tuple; `advisories`
    holds non-blocking notes (an old beta, an experimental architecture) by backend.
    `sdpa_excluded` names the SDPA kernels the SDPA adapter must keep torch from using, with why
    (`backends.sdpa.excluded_kernels`: its flash kernel, where that is a refused FA4).
    Under `FA4DOCTOR_POLICY=fastest` (`order`), `measured` holds the figures the choice was made
    from (every eligible backend's, vetted or not) and `sdpa_kernel` the one SDPA kernel the
    adapter keeps torch to, where that pays for itself (`dispatch/speed.py`).
    """

    preferred: BackendName
    chosen: BackendName | None
    reasons: tuple[tuple[BackendName, Reasons], ...]
    advisories: tuple[tuple[BackendName, Reasons], ...] = field(default=())
    sdpa_excluded: tuple[tuple[str, Reasons], ...] = field(default=())
    forced: BackendName | None = None  # the policy's FA4DOCTOR_BACKEND
    strict: bool = False  # the policy's FA4DOCTOR_STRICT
    order: str = "priority"  # the policy's FA4DOCTOR_POLICY
    measured: tuple[Measured, ...] = field(default=())
    sdpa_kernel: str | None = None

    def reasons_for(self, backend: BackendName) -> Reasons:
        return dict(self.reasons).get(backend, ())

    @property
    def rejected(self) -> dict[BackendName, Reasons]:
        return {name: found for name, found in self.reasons if found}

    @property
    def outpaced(self) -> bool:
        """The preferred backend could run the call, but `fastest` chose a vetted backend this node
        measured faster: not a fallback (no reason refused the preferred one)."""
        return (self.order == "fastest" and self.chosen is not None and self.chosen is not self.preferred
                and (self.preferred, ()) in self.reasons)

    @property
    def fell_back(self) -> bool:
        """The preferred backend could not run the call (its reasons say why)."""
        return self.chosen is not self.preferred and not self.outpaced

    @property
    def fallback_code(self) -> ReasonCode | None:
        """The first reason of the preferred backend: the `reason` label of a fallback."""
        found = self.reasons_for(self.preferred)
        return found[0].code if self.fell_back and found else None

    @property
    def outcome(self) -> str:
        """The policy's verdict, one word for select, explain and check alike: `preferred`,
        `outpaced` (`fastest` chose a vetted backend measured faster than the eligible preferred
        one), `fell_back`, or an error: `forced_not_eligible`, `no_backend`, `fallback_refused`."""
        if self.forced is not None and self.chosen is not self.forced:
            return "forced_not_eligible"
        if self.chosen is None:
            return "no_backend"
        if self.outpaced:
            return "outpaced"
        if self.fell_back:
            return "fallback_refused" if self.strict else "fell_back"
        return "preferred"

    @property
    def error(self) -> DispatchError | None:
        """What `select` raises for this decision, or None when the call may run."""
        kind = self.outcome
        if kind == "forced_not_eligible":
            return BackendNotEligible(self.forced, self)
        if kind == "no_backend":
            return NoBackendAvailable(self)
        return FallbackRefused(self) if kind == "fallback_refused" else None

    @property
    def summary(self) -> str | None:
        """The outcome in words, or None when the preferred backend runs."""
        kind = self.outcome
        if kind == "forced_not_eligible":
            return f"FA4DOCTOR_BACKEND={self.forced.value} is forced but cannot run this call (see its reasons)"
        if kind == "no_backend":
            return "no backend the policy allows can run this call"
        if kind in ("preferred", "outpaced"):
            return None
        code = self.fallback_code.value if self.fallback_code else "not chosen"
        strict = "; FA4DOCTOR_STRICT=1 makes this an error at run time" if self.strict else ""
        return f"fell back from {self.preferred.value} ({code}){strict}"


def _table(decision: Decision) -> str:
    lines = []
    for name, found in decision.reasons:
        lines.append(f"  {name.value}: " + ("eligible" if not found else "; ".join(map(str, found))))
    return "\n".join(lines)


class BackendNotEligible(DispatchError):
    """The policy forced a backend that cannot run this call."""

    def __init__(self, backend: BackendName, decision: Decision):
        self.backend, self.decision = backend, decision
        super().__init__(f"FA4DOCTOR_BACKEND={backend.value} cannot run this call:\n{_table(decision)}")


class FallbackRefused(DispatchError):
    """Strict mode (`FA4DOCTOR_STRICT=1`) and the preferred backend cannot run this call."""

    def __init__(self, decision: Decision):
        self.decision = decision
        super().__init__(f"FA4DOCTOR_STRICT=1 refuses to fall back from {decision.preferred.value} "
                         f"to {decision.chosen.value if decision.chosen else 'nothing'}:\n{_table(decision)}")


class NoBackendAvailable(DispatchError):
    """No backend the policy allows can run this call (SDPA disabled, or the spec is unrunnable)."""

    def __init__(self, decision: Decision):
        self.decision = decision
        super().__init__(f"no backend can run this call:\n{_table(decision)}")


def decision_to_plain(decision: Decision) -> dict:
    """The JSON shape of a decision, shared by `explain --json`, `check --json` and the daemon."""
    notes = dict(decision.advisories)
    return {
        "preferred": decision.preferred.value,
        "chosen": decision.chosen.value if decision.chosen else None,
        "fell_back": decision.fell_back,
        "fallback_reason": decision.fallback_code.value if decision.fallback_code else None,
        "outcome": decision.outcome,
        "backends": [{"backend": name.value, "eligible": not found,
                      "reasons": to_plain(found), "advisories": to_plain(notes.get(name, ()))}
                     for name, found in decision.reasons],
        "sdpa_excluded": [{"kernel": kernel, "reasons": to_plain(found)} for kernel, found in decision.sdpa_excluded],
        "policy_order": decision.order,
        "measured": to_plain(decision.measured),
        "sdpa_kernel": decision.sdpa_kernel,
    }
