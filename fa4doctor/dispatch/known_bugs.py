"""Known bugs as data: one table the rules, `check`, `explain` and docs/dispatch.md all read.

A bug is refused for every version from `first_bad` until `fixed_in`; with no `fixed_in` it is
refused for every newer beta too, because a release is fixed only once it is proven fixed. A newer
beta inherits the bug by default, never loses it by a version guess.

This node's evidence outranks the table in both directions (`fa4doctor.dispatch.vetting`): a
passing smoke case for the call's exact class under the current fingerprint lifts the refusal
(shown as an advisory naming that ledger entry), and a failure refuses whatever the table says.

>>> bug = by_id("fa4-sm90-dq-head-dim")
>>> bug.affects_version("4.0.0b40"), bug.matches(AttentionSpec(head_dim_qk=72, training=True), 9)
(True, True)
>>> bug.matches(AttentionSpec(head_dim_qk=64, training=True), 9)
False
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fa4doctor.dispatch.reasons import ReasonCode
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.versions import at_least, below
from fa4doctor.names import BackendName

R = ReasonCode


@dataclass(frozen=True, slots=True)
class KnownBug:
    id: str
    backend: BackendName
    arch_majors: frozenset[int]
    direction: str  # "fwd": every call; "bwd": training calls only
    applies: Callable[[AttentionSpec], bool]
    where: str  # the predicate in words, for docs and messages
    effect: str
    first_bad: str
    fixed_in: str | None
    source: str
    code: ReasonCode = R.KNOWN_BUG

    def affects_version(self, version: str | None) -> bool:
        """True from `first_bad` until `fixed_in`; an unreadable version is not proven fixed."""
        if version is None:
            return True
        return at_least(version, self.first_bad) and (self.fixed_in is None or below(version, self.fixed_in))

    def matches(self, spec: AttentionSpec, arch_major: int) -> bool:
        return (arch_major in self.arch_majors and (self.direction == "fwd" or spec.training)
                and self.applies(spec))

    def text(self) -> str:
        fixed = f"fixed in {self.fixed_in}" if self.fixed_in else "no release is proven to fix it"
        return f"{self.id}: {self.effect} ({self.where}); from {self.first_bad}, {fixed}; {self.source}"


def _sm90_dq_head_dim(spec: AttentionSpec) -> bool:
    return any(d < 128 and d % 32 in (8, 16) for d in (spec.head_dim_qk, spec.head_dim_v))


def _hd256(spec: AttentionSpec) -> bool:
    return (spec.head_dim_qk, spec.head_dim_v) == (256, 256)


FA4 = BackendName.FA4
SM100 = frozenset({10, 11})
KNOWN_BUGS: tuple[KnownBug, ...] = (
    KnownBug(
        "fa4-sm90-dq-head-dim", FA4, frozenset({9}), "bwd", _sm90_dq_head_dim,
        "head dims below 128 with head_dim % 32 in {8, 16}: 8, 16, 40, 48, 72, 80, 104, 112",
        "the SM90 backward returns a wrong dq (relative error near 1; with GQA dk and dv too) or fails "
        "to compile, for every dtype, mask alignment and window",
        "4.0.0b5", None,
        "flash_bwd_sm90.py rounds the head dim to 16 (4.0.0b40 L85-86) where interface.py allocates dq's "
        "accumulator at 32 (4.0.0b40 L2357-2358); measured on an H100 with 4.0.0b36 and 4.0.0b40 "
        "(docs/validation/h100-smoke/, docs/validation/h100-b40/); fix proposed in "
        "https://github.com/Dao-AILab/flash-attention/pull/2896"),
    KnownBug(
        "fa4-sm90-bwd-varlen-past-seqlen-k", FA4, frozenset({9}), "bwd", lambda s: s.varlen,
        "variable-length batches",
        "the SM90 backward reads K/V past seqlen_k unbounded, so ragged batches can get NaN gradients",
        "4.0.0b5", "4.0.0b39",
        "4.0.0b36 builds the K/V TMA atoms on the whole tensor (flash_attn/cute/flash_bwd_sm90.py 4.0.0b36 "
        "L475-477); 4.0.0b39, the next published beta, bounds them by seqlen_k (same file, 4.0.0b39 L446, "
        "L476-485, citing https://github.com/Dao-AILab/flash-attention/issues/3068)"),
    KnownBug(
        "fa4-softcap-bwd-none", FA4, frozenset({9, 10, 11, 12}), "bwd", lambda s: s.softcap > 0,
        "softcap with gradients", "the backward kernel was given softcap=None",
        "4.0.0b0", "4.0.0b9", "https://github.com/Dao-AILab/flash-attention/pull/2402",
        R.SOFTCAP_UNSUPPORTED),
    KnownBug(
        "fa4-sm90-deterministic-gqa", FA4, frozenset({9}), "bwd", lambda s: s.deterministic and s.gqa,
        "deterministic backward with GQA", "the SM90 backward was not deterministic with GQA",
        "4.0.0b0", "4.0.0b12", "https://github.com/Dao-AILab/flash-attention/pull/2510",
        R.DETERMINISTIC_UNSUPPORTED),
    KnownBug(
        "fa4-sm100-hd256-bwd-softcap", FA4, SM100, "bwd", lambda s: _hd256(s) and s.softcap > 0,
        "head dims (256, 256) with softcap",
        "the dedicated hd256 SM100 backward asserted on softcap; 4.0.0b39 runs hd256 through the generic "
        "backward instead, which no smoke run has proven",
        "4.0.0b11", None, "flash_attn/cute/interface.py 4.0.0b36 L2957-2958; 4.0.0b40 config.py L3130",
        R.SOFTCAP_UNSUPPORTED),
    KnownBug(
        "fa4-sm100-hd256-bwd-sink", FA4, SM100, "bwd", lambda s: _hd256(s) and s.learnable_sink,
        "head dims (256, 256) with a learnable sink",
        "the dedicated hd256 SM100 backward asserted on a learnable sink; 4.0.0b39 runs hd256 through the "
        "generic backward instead, which no smoke run has proven",
        "4.0.0b11", None, "flash_attn/cute/interface.py 4.0.0b36 L2453-2456; 4.0.0b40 config.py L3130",
        R.SINK_UNSUPPORTED),
    KnownBug(
        "fa4-sm100-hd256-window", FA4, SM100, "fwd", lambda s: _hd256(s) and s.has_window,
        "head dims (256, 256) with a sliding window",
        "TransformerEngine turns these off on SM100/110 while the fix is open",
        "4.0.0b11", None, "https://github.com/Dao-AILab/flash-attention/pull/2749",
        R.WINDOW_UNSUPPORTED),
)


def by_id(bug_id: str) -> KnownBug:
    return next(b for b in KNOWN_BUGS if b.id == bug_id)


def known_bugs(backend: BackendName, spec: AttentionSpec, arch_major: int, version: str | None) -> list[KnownBug]:
    """The table's bugs that `backend` at `version` has for `spec` on an `arch_major` GPU."""
    return [b for b in KNOWN_BUGS if b.backend is backend and b.matches(spec, arch_major)
            and b.affects_version(version)]


def head_dims_touched(candidates: range = range(8, 257, 8)) -> tuple[int, ...]:
    """Every head dim (of `candidates`) that some known bug's predicate has ever matched for a
    plain training call: what a re-vetting run after an upgrade must cover first.

    >>> head_dims_touched()[:4]
    (8, 16, 40, 48)
    """
    def touched(dim: int) -> bool:
        spec = AttentionSpec(head_dim_qk=dim, training=True)
        return any(bug.applies(spec) for bug in KNOWN_BUGS)  # a plain call: features play no part
    return tuple(d for d in candidates if touched(d))
