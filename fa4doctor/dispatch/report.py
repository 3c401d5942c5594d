"""The `fa4doctor check` report: the snapshot, a verdict per GPU and spec, problems, exit status.

Verdicts come only from `dispatch.select.decide`; this module only arranges them. The JSON shape
is the `fa4doctor.check` contract (schema_version 1) that the daemon and `explain --env` read.

>>> from fa4doctor.environment import Environment
>>> report = build_report(Environment(), DEFAULT_SPECS[:1])
>>> report["verdicts"][0]["chosen"], report["healthy"], report["exit_code"]
('sdpa', False, 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fa4doctor.exit_codes import EXIT_OK, EXIT_PROBLEMS
from fa4doctor.dispatch.backends import BY_NAME
from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.reasons import BackendName, decision_to_plain
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.versions import parse
from fa4doctor.dispatch.vetting import fingerprint
from fa4doctor.environment import Environment, GpuFacts
from fa4doctor.dispatch.default_specs import DEFAULT_SPECS
from fa4doctor.dispatch.known_bugs import KNOWN_BUGS

SCHEMA = "fa4doctor.check"
SCHEMA_VERSION = 1

# What to do when the expected backend is refused, by the first reason's code (installs: `_install_fix`).
REASON_FIXES = {
    "import_failed": "see the import problem above",
    "no_gpu": "run the check where a GPU is visible (CUDA_VISIBLE_DEVICES, --gpus all)",
    "arch_unsupported": "this GPU cannot run the backend; nothing to fix on the node",
    "smoke_failed": "fa4doctor smoke --json shows the failing case; the dispatcher avoids it meanwhile",
    "disabled_by_policy": "unset FA4DOCTOR_BACKEND / FA4DOCTOR_DISABLE if that is not intended",
}


def judged_gpus(env: Environment, only: Sequence[int] = ()) -> list[GpuFacts | None]:
    """The GPUs a process sees (by CUDA ordinal), or `[None]` when none is visible."""
    visible = sorted((g for g in env.gpus if g.cuda_index is not None), key=lambda g: g.cuda_index)
    if only:
        visible = [g for g in visible if g.cuda_index in only]
    return visible or [None]


def verdicts(env: Environment, specs: Sequence[tuple[str, AttentionSpec]], policy: Policy = Policy(),
             only: Sequence[int] = ()) -> list[dict]:
    found = []
    for gpu in judged_gpus(env, only):
        index = gpu.cuda_index if gpu else 0
        for name, spec in specs:
            found.append({"gpu": index, "gpu_uuid": gpu.uuid if gpu else None,
                          "gpu_name": gpu.name if gpu else "no GPU visible", "spec_name": name,
                          "spec": spec.to_dict(), **decision_to_plain(decide(spec, env, policy, index))})
    return found


def _install_fix(code: str, backend: BackendName) -> str | None:
    """pip's command for the expected backend, from its own data (name, recommended version)."""
    cls = BY_NAME[backend]
    name, want = cls.DISTRIBUTIONS[0], cls.RECOMMENDED_VERSION or cls.MIN_VERSION
    version = parse(want)
    pre = "--pre " if version is not None and version.is_prerelease else ""  # FA4 ships only pre-releases
    if code == "version_too_old":
        return f"pip install {pre}-U {name}"
    if code == "not_installed":
        extra = " (or: pip install 'fa4doctor[fa4]')" if backend is BackendName.FA4 else ""
        return f"pip install {pre}'{name}>={want}'{extra}" if want else f"pip install {name}{extra}"
    return None


def verdict_problems(found: list[dict], expect: BackendName) -> list[dict]:
    """One problem per GPU and first reason where the expected backend was not chosen."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for verdict in found:
        mine = next(b for b in verdict["backends"] if b["backend"] == expect.value)
        # FA4DOCTOR_POLICY=fastest ran a vetted backend measured faster than the expected one, which
        # could run the call: a choice, not a problem.
        if verdict["chosen"] == expect.value or (verdict["outcome"] == "outpaced" and mine["eligible"]):
            continue
        code = mine["reasons"][0]["code"] if mine["reasons"] else "not_chosen"
        groups.setdefault((verdict["gpu"], code), []).append(verdict)
    problems = []
    for (gpu, code), group in groups.items():
        first = next(b for b in group[0]["backends"] if b["backend"] == expect.value)
        detail = first["reasons"][0]["detail"] if first["reasons"] else f"{group[0]['chosen']} ranks higher"
        names = ", ".join(v["spec_name"] for v in group)
        problems.append({"code": f"{expect.value}_not_eligible", "severity": "error",
                         "message": f"{expect.value} is not used on cuda:{gpu} ({group[0]['gpu_name']}) for "
                                    f"{names}: {code}: {detail}",
                         "fix": _install_fix(code, expect) or REASON_FIXES.get(
                             code, f"fa4doctor explain for the full table ({code})")})
    return problems


def known_bug_problems(env: Environment) -> list[dict]:
    """Each known bug (dispatch/known_bugs.py) of an installed backend's version on a GPU model here:
    a warning, since the dispatcher routes the calls it touches elsewhere unless this node proves them."""
    found, seen = [], set()
    for gpu in env.gpus:
        for install in env.backends:
            for bug in KNOWN_BUGS:
                key = (bug.id, gpu.name)
                if bug.backend is not install.backend or not install.installed or key in seen \
                        or gpu.compute_capability[0] not in bug.arch_majors or not bug.affects_version(install.version):
                    continue
                seen.add(key)
                fix = (f"upgrade to {bug.fixed_in} or newer" if bug.fixed_in else
                       "none released; fa4doctor smoke proves a class on this node if it works here")
                found.append({"code": "known_bug", "severity": "warning",
                              "message": f"{bug.id} affects {install.distribution} {install.version} on {gpu.name}: "
                                         f"{bug.effect} ({bug.where}); those calls run on another backend",
                              "fix": fix})
    return found


def ledger_problems(env: Environment) -> list[dict]:
    """This node's recorded smoke failures are findings: one per backend and GPU model whose current
    fingerprint has failures (an error: a kernel here computes wrong results or does not run)."""
    groups: dict[tuple[BackendName, str], list] = {}
    for gpu in env.gpus:
        for backend in {e.backend for e in env.ledger}:
            current = fingerprint(backend, env, gpu)
            failed = [e for e in env.ledger if e.backend is backend and e.failed and e.fingerprint == current]
            if failed and (backend, gpu.name) not in groups:
                groups[(backend, gpu.name)] = failed
    problems = []
    for (backend, gpu_name), failed in sorted(groups.items()):
        dims = sorted({e.case_class.head_dims for e in failed})
        shown = ", ".join(f"{q}" if q == v else f"{q}/{v}" for q, v in dims)
        problems.append({"code": "smoke_failures_recorded", "severity": "error",
                         "message": f"{len(failed)} smoke case(s) of {backend.value} failed on this node's "
                                    f"{gpu_name} under the current software stack (head dims {shown}); "
                                    f"the dispatcher refuses every call those failures reach",
                         "fix": "fa4doctor smoke --json shows each failure; upgrade to a release that fixes "
                                "it, then re-run smoke (fa4doctor explain shows what runs instead)"})
    return problems


def build_report(env: Environment, specs: Sequence[tuple[str, AttentionSpec]] = DEFAULT_SPECS, *,
                 expect: BackendName = BackendName.FA4, policy: Policy = Policy(), only: Sequence[int] = (),
                 timings: Mapping[str, float] | None = None, smoke: dict | None = None) -> dict:
    """The whole `check --json` object for `env` (verdicts recomputed from it, never stored)."""
    found = verdicts(env, specs, policy, only)
    problems = [{"code": f.code, "severity": f.severity, "message": f.message, "fix": f.fix} for f in env.findings]
    problems += known_bug_problems(env) + ledger_problems(env)
    problems += verdict_problems(found, expect)  # the conclusion, last
    healthy = not any(p["severity"] == "error" for p in problems)
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "environment": env.to_plain(),
            "expect": expect.value, "verdicts": found, "problems": problems, "healthy": healthy,
            "exit_code": EXIT_OK if healthy else EXIT_PROBLEMS, "timings": dict(timings or {"total_seconds": 0.0}),
            "smoke": smoke}
