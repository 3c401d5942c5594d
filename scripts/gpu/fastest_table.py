"""Issue 15's table from one bench_fastest.sh run: per bench shape and direction on the first GPU,
the best figure of the run, what `FA4DOCTOR_POLICY=fastest` runs (and how far from the best), and
what the fixed order runs (and how much slower than `fastest`). The decisions are the real rules
(`decide`) over the run's own check snapshot, ledger and speed records, so this runs anywhere:

    python scripts/gpu/fastest_table.py OUTDIR     (OUTDIR holds bench.json, check.json, ledger.json)

A row is `zoo` (the model zoo: what the issue's "within 3% of the best" is about) or `spec` (the
default specs). `vetted` says whether the run's best backend is vetted for the row's class: `fastest`
only ever picks a vetted backend, so where the best is not vetted its pick may be further off.
"""

from __future__ import annotations

import json
import pathlib
import sys
from dataclasses import replace

from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.reasons import kernel_label
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.speed import vetted
from fa4doctor.environment import Environment
from fa4doctor.names import BackendName
from fa4doctor.probe.ledger import read_ledger
from fa4doctor.smoke.zoo import ZOO_NAMES


def _pick(spec: AttentionSpec, env: Environment, policy: Policy) -> str:
    d = decide(spec, env, policy, 0)
    if d.chosen is None:
        return "none"
    return kernel_label(d.chosen.value, d.sdpa_kernel if d.chosen is BackendName.SDPA else None)


def rows(out: pathlib.Path):
    bench = json.loads((out / "bench.json").read_text())
    read = read_ledger(out / "ledger.json")
    env = Environment.from_json((out / "check.json").read_text()).with_ledger(read.entries, read.speed)
    gpu = bench["gpus"][0]["uuid"]
    for shape in bench["shapes"]:
        for direction in ("fwd", "fwd_bwd"):
            figures = {kernel_label(r["backend"], r["kernel"]): r["median_ms"] for r in bench["results"]
                       if r["shape"] == shape["name"] and r["direction"] == direction and r["outcome"] == "pass"
                       and r["gpu_uuid"] == gpu}
            if not figures:
                continue
            spec = replace(AttentionSpec.from_dict(shape["spec"]), training=direction == "fwd_bwd")
            best = min(figures, key=figures.get)
            fast, fixed = _pick(spec, env, Policy(order="fastest")), _pick(spec, env, Policy())
            source = "zoo" if shape["name"].rsplit(" s", 1)[0] in ZOO_NAMES else "spec"
            proven = vetted(BackendName(best.split()[0]), spec, env, env.gpus[0])
            yield shape["name"], direction, source, best, proven, fast, fixed, figures


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    print(f"{'shape':30} {'dir':7} {'from':4} {'best':22} {'vetted':6} {'fastest runs':22} {'of best':>8} "
          f"{'priority runs':22} {'fastest gains':>13}")
    worst: dict[str, float] = {}
    for name, direction, source, best, proven, fast, fixed, figures in rows(out):
        of_best = figures[fast] / figures[best] if fast in figures else None
        gain = figures[fixed] / figures[fast] if fast in figures and fixed in figures else None
        if of_best is not None:
            key = source if proven else f"{source}, best not vetted"
            worst[key] = max(worst.get(key, 1.0), of_best)
        print(f"{name[:30]:30} {direction:7} {source:4} {best[:22]:22} {'yes' if proven else 'no':6} {fast[:22]:22} "
              f"{f'{of_best:.3f}x' if of_best else '-':>8} {fixed[:22]:22} {f'{gain:.3f}x' if gain else '-':>13}")
    for key, value in sorted(worst.items()):
        print(f"{key}: fastest's pick is within {100 * (value - 1):.1f}% of the best figure of this run")


if __name__ == "__main__":
    main()
