"""`fa4doctor explain` output: one decision as a terminal table or as JSON. Renders, never decides.

>>> from fa4doctor.dispatch.selection import decide
>>> from fa4doctor.environment import Environment
>>> spec = AttentionSpec(device="cpu")
>>> plain = explanation_to_plain(Explanation("demo", spec, decide(spec, Environment()), ()))
>>> plain["chosen"], [b["eligible"] for b in plain["backends"]]
('sdpa', [False, False, False, True])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

from fa4doctor.dispatch.backends.base import cc_text
from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.reasons import BackendName, Decision, Reason, decision_to_plain
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.speed import direction, shape_class
from fa4doctor.environment import Environment
from fa4doctor.records import to_plain

SCHEMA = "fa4doctor.explain"
SCHEMA_VERSION = 1

Kernels = tuple[tuple[str, tuple[Reason, ...]], ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    """One spec's decision, with SDPA's kernels and the exit code it earns on its own."""

    name: str
    spec: AttentionSpec
    decision: Decision
    sdpa_kernels: Kernels
    exit_code: int = 0
    message: str | None = None  # why the exit code is not 0, in one sentence


def policy_text(policy: Policy) -> str:
    if policy.force is not None:
        return f"FA4DOCTOR_BACKEND={policy.force.value} (only that backend may run)"
    parts = []
    if policy.disabled:
        parts.append("FA4DOCTOR_DISABLE=" + ",".join(sorted(b.value for b in policy.disabled)))
    if policy.strict:
        parts.append("FA4DOCTOR_STRICT=1 (falling back is an error)")
    if policy.order == "fastest":
        parts.append("FA4DOCTOR_POLICY=fastest (the vetted backend measured fastest here; "
                     "fa4 > fa3 > fa2 > sdpa where nothing is)")
    return "; ".join(parts) or "default: fa4 > fa3 > fa2 > sdpa, fall back when needed"


def class_text(spec: AttentionSpec) -> str:
    """The shape class and direction a `fastest` decision looked up (dispatch/speed.py).

    >>> class_text(AttentionSpec(seqlen_q=3000, attn_mask_type="causal"))
    'bf16 d128 causal s4096 fwd_bwd'
    """
    shape = shape_class(spec)
    klass = shape.case_class
    dims = f"d{klass.head_dim_qk}" + (f",{klass.head_dim_v}" if klass.head_dim_v != klass.head_dim_qk else "")
    lengths = f"s{shape.seqlen_q}" + (f"/{shape.seqlen_kv}" if shape.seqlen_kv != shape.seqlen_q else "")
    extra = [word for word, on in (("gqa", klass.gqa), ("window", klass.window)) if on] + list(shape.features)
    return " ".join([klass.dtype, dims, klass.attn_mask_type, *extra, lengths, direction(spec)])


def environment_text(env: Environment, gpu: int, source: str) -> str:
    facts = env.gpu(gpu)
    where = f"cuda:{gpu} {cc_text(facts)}" if facts else f"no CUDA device {gpu}"
    installed = [f"{b.backend.value} {b.version}" for b in env.backends
                 if b.installed and b.backend is not BackendName.SDPA]
    torch = f"torch {env.torch.version or '?'}" + (f" (CUDA {env.torch.cuda})" if env.torch.cuda else "")
    if env.torch.flash_impl:  # torch >= 2.12's registry swapped what SDPA's flash kernel runs
        torch += f", SDPA flash kernel: {env.torch.flash_impl}"
    return f"{source}: {where}; {torch}; installed: {', '.join(installed) or 'no flash-attn backend'}"


def explanation_to_plain(item: Explanation) -> dict[str, Any]:
    """One explanation as JSON: `decision_to_plain` plus the spec, SDPA's kernels and the exit code."""
    return {"name": item.name, "spec": item.spec.to_dict(), **decision_to_plain(item.decision),
            "speed_class": class_text(item.spec) if item.decision.order == "fastest" else None,
            "sdpa_kernels": [{"kernel": name, "usable": not found, "reasons": to_plain(found)}
                             for name, found in item.sdpa_kernels],
            "exit_code": item.exit_code, "message": item.message}


def report_to_plain(items: list[Explanation], policy: Policy, env_text: str, exit_code: int) -> dict[str, Any]:
    """The whole `explain --json` document. With one spec its fields are also at the top level."""
    explanations = [explanation_to_plain(item) for item in items]
    top = dict(explanations[0]) if len(explanations) == 1 else {}
    top.update({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "exit_code": exit_code,
                "policy": {"force": policy.force.value if policy.force else None,
                           "disabled": sorted(b.value for b in policy.disabled), "strict": policy.strict,
                           "order": policy.order, "text": policy_text(policy)},
                "environment": env_text, "explanations": explanations})
    return top


def excluded_text(decision: Decision, brief: bool = False) -> str:
    """What the SDPA adapter keeps torch from using, in words ("" when nothing); `brief`: the code
    instead of the detail.

    >>> from fa4doctor.dispatch.reasons import ReasonCode
    >>> why = Reason(ReasonCode.SMOKE_FAILED, "it is FA4 here and FA4 is refused: bwd failed")
    >>> decision = Decision(BackendName.FA4, BackendName.SDPA, (), sdpa_excluded=(("flash", (why,)),))
    >>> excluded_text(decision), excluded_text(decision, brief=True)
    ('flash kernel excluded: it is FA4 here and FA4 is refused: bwd failed', 'flash kernel excluded: smoke_failed')
    """
    return "; ".join(f"{kernel} kernel excluded: {found[0].code.value if brief else found[0].detail}"
                     for kernel, found in decision.sdpa_excluded)


def _status(item: Explanation, name: Any, found: tuple[Reason, ...]) -> str:
    if name is item.decision.chosen:
        return "[bold green]chosen[/]"
    return "[green]eligible[/]" if not found else "[red]rejected[/]"


def _lines(found: tuple[Reason, ...], style: str = "") -> list[str]:
    from rich.markup import escape

    return [f"[{style}]{escape(r.code.value)}[/]: {escape(r.detail)}" if style else
            f"{escape(r.code.value)}: {escape(r.detail)}" for r in found]


def render_explanation(item: Explanation, console: Any) -> None:
    """Print one explanation: a table of every backend, SDPA's kernels, the chosen backend."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{escape(item.name)}: {escape(item.spec.short())}", title_justify="left",
                  show_lines=True, expand=False)
    table.add_column("backend", style="bold")
    table.add_column("status")
    table.add_column("reasons (code: detail) and advisories")
    notes = dict(item.decision.advisories)
    excluded = excluded_text(item.decision)
    for name, found in item.decision.reasons:
        text = _lines(found) + _lines(notes.get(name, ()), "yellow")
        if name is BackendName.SDPA and excluded:
            text.append(f"[yellow]{escape(excluded)}[/]")
        table.add_row(name.value, _status(item, name, found), "\n".join(text) or "-")
    console.print(table)
    kernels = ", ".join(f"{name} ({'usable' if not found else found[0].code.value})"
                        for name, found in item.sdpa_kernels)
    console.print(f"sdpa kernels, in torch's order: {escape(kernels)}", highlight=False)
    if item.decision.order == "fastest":
        render_measured(item, console)
    chosen = item.decision.chosen.value if item.decision.chosen else "none"
    if item.decision.chosen is BackendName.SDPA and item.decision.sdpa_kernel:
        chosen += f" (kept to its {item.decision.sdpa_kernel} kernel, measured fastest)"
    elif item.decision.chosen is BackendName.SDPA and excluded:  # the detail is in the table above
        chosen += f" ({escape(excluded_text(item.decision, brief=True))})"
    verdict = f"chosen: [bold]{chosen}[/] (preferred: {item.decision.preferred.value})"
    if item.message:
        verdict += f" - {escape(item.message)}"
    elif item.decision.outpaced:
        verdict += (f" - {item.decision.preferred.value} could run it; {item.decision.chosen.value} was measured "
                    "faster here (FA4DOCTOR_POLICY=fastest)")
    console.print(verdict, highlight=False)


def render_measured(item: Explanation, console: Any) -> None:
    """The figures a `fastest` decision was made from: one row per backend (and SDPA kernel)."""
    from rich.table import Table

    figures = item.decision.measured
    if not figures:
        console.print(f"measured here: nothing for {class_text(item.spec)}; the fixed order decides "
                      "(fa4doctor bench records it)", highlight=False)
        return
    table = Table(title=f"measured here: {class_text(item.spec)}", title_justify="left", expand=False)
    for column, justify in (("backend", "left"), ("median ms", "right"), ("TFLOP/s", "right"),
                            ("GPUs", "right"), ("vetted", "left")):
        table.add_column(column, justify=justify)
    for f in figures:
        mark = "[bold green]" if f.backend is item.decision.chosen and f.kernel == _kernel_run(item) else ""
        rate = "-" if f.tflops is None else (f"{f.tflops:.0f}" if f.tflops >= 10 else f"{f.tflops:.3g}")
        table.add_row(f"{mark}{f.label}{'[/]' if mark else ''}", f"{f.median_ms:.3f}", rate, str(f.records),
                      "yes" if f.vetted else "[red]no: not chosen[/]")
    console.print(table)
    if not any(f.vetted for f in figures):
        console.print("no measured backend is vetted for this class; the fixed order decides", highlight=False)


def _kernel_run(item: Explanation) -> str | None:
    """Which SDPA figure the chosen SDPA runs as: its kept kernel, else torch's own choice."""
    return item.decision.sdpa_kernel if item.decision.chosen is BackendName.SDPA else None


def render_report(items: list[Explanation], policy: Policy, env_text: str, file: IO[str]) -> None:
    from rich.console import Console

    console = Console(file=file, highlight=False, soft_wrap=False)
    console.print(f"environment: {env_text}", markup=False)
    console.print(f"policy: {policy_text(policy)}", markup=False)
    for item in items:
        console.print()
        render_explanation(item, console)
