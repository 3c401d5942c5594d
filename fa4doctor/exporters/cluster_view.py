"""The terminal view of a job's verdict (`fa4doctor cluster`): plain lines, so a log keeps them.

It renders the verdict's JSON object (what `cluster --json` prints), so a saved verdict renders the same.

>>> from fa4doctor.dispatch.agreement import build_verdict, rank_report
>>> from fa4doctor.dispatch.spec import AttentionSpec
>>> from fa4doctor.environment import Environment
>>> reports = [rank_report(0, Environment(hostname="n1"), [("cpu", AttentionSpec(device="cpu"))])]
>>> print(render_cluster(build_verdict(reports, world_size=2).to_plain()).splitlines()[0])
fa4doctor cluster: 2 ranks on 1 node, 0 GPUs; 1 of 2 answered
"""

from __future__ import annotations

from fa4doctor.dispatch.agreement import PARTS


def _ranks(ranks) -> str:
    ranks = list(ranks)
    return ("rank " if len(ranks) == 1 else "ranks ") + ",".join(str(r) for r in ranks)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _stack_line(stack: dict) -> str:
    def part(key: str) -> str:
        value = stack.get(key)
        return ", ".join(value) if isinstance(value, list) else (value or "-")
    fa = ", ".join(f"{k} {stack[k]}" for k in ("fa4", "fa3", "fa2") if stack.get(k)) or "no FA"
    if stack.get("cutlass_dsl"):
        fa += f", cutlass-dsl {stack['cutlass_dsl']}"
    text = (f"{fa}; torch {part('torch')} (CUDA {part('cuda')}); driver {part('driver')}; "
            f"{part('gpu_model') if stack.get('gpu_model') else 'no GPU'}")
    if stack.get("fa4_knobs"):
        text += f"; knobs {part('fa4_knobs')}"
    if stack.get("smoke_failures"):
        text += f"; {len(stack['smoke_failures'])} smoke failure(s)"
    return text


def _spec_line(spec: dict) -> str:
    backend = spec["backend"] or "nothing"
    text = f"  {spec['spec']}: {backend} on {_ranks(spec['ranks'])}"
    for other in spec["others"]:
        text += f"; rank {other['rank']}: {other['chosen'] or 'nothing'}" + (f" ({other['why']})" if other["why"] else "")
    if spec["backend"] != spec["preferred"]:
        text += f"; not the preferred {spec['preferred']}"
    if spec["others"]:
        text += f"; every rank can run: {spec['uniform'] or 'nothing'}"
    return text


def render_cluster(verdict: dict) -> str:
    """`verdict` (a `cluster --json` object) as the lines `fa4doctor cluster` prints."""
    world, answered = verdict["world_size"], len(verdict["answered"])
    lines = [f"fa4doctor cluster: {_plural(world, 'rank')} on {_plural(verdict['nodes'], 'node')}, "
             f"{_plural(verdict['gpus'], 'GPU')}; {answered} of {world} answered"]
    if verdict["missing"]:
        within = f" within {verdict['timeout_s']:g} s" if verdict.get("timeout_s") else ""
        lines.append(f"no answer{within}: {_ranks(verdict['missing'])}")
    lines += [f"no facts from rank {rank}: {why}" for rank, why in verdict["failed"]]
    lines.append(f"stacks ({len(verdict['groups'])}, ranks with identical fingerprints):")
    for group in verdict["groups"]:
        lines.append(f"  {group['stack_id']} {_ranks(group['ranks'])} on {', '.join(group['nodes'])}: "
                     f"{_stack_line(group['stack'])}")
    if verdict["differences"]:
        lines.append("differences:")
    for difference in verdict["differences"]:
        values = "; ".join(f"{value} on {_ranks(ranks)}" for value, ranks in difference["values"])
        lines.append(f"  {PARTS[difference['part']]}: {values}")
    lines.append("backend per spec:")
    lines += [_spec_line(spec) for spec in verdict["specs"]]
    if verdict.get("collective"):
        lines.append(f"collective: {verdict['collective']}")
    if verdict["odd_ranks"]:
        lines.append(f"odd ranks: {', '.join(str(r) for r in verdict['odd_ranks'])}")
    lines.append(f"verdict: {'; '.join(_problems(verdict))} (exit {verdict['exit_code']})")
    return "\n".join(lines)


def _problems(verdict: dict) -> list[str]:
    if verdict["healthy"]:
        return ["every rank agrees and runs the preferred backend"]
    found = [text for text, bad in (
        ("ranks did not answer", verdict["missing"]), ("ranks have no facts", verdict["failed"]),
        ("stacks differ", len(verdict["groups"]) > 1),
        ("ranks pick different backends", any(s["others"] for s in verdict["specs"])),
        ("the preferred backend is not chosen", any(s["backend"] != s["preferred"] for s in verdict["specs"])),
        ("the collective failed", verdict.get("collective_ok") is False)) if bad]
    return found or ["problems found"]
