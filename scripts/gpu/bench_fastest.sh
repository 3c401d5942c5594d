#!/usr/bin/env bash
# Issue 15 on an H100 with FA4 installed: vet the zoo's classes (smoke), time the zoo at its lengths
# and the default specs (fa4doctor bench), then explain the d64 and d128 causal training calls under
# FA4DOCTOR_POLICY=fastest (and under priority, to compare), and tabulate per zoo shape and
# direction how close `fastest`'s pick is to the best figure measured in the same run and what it
# gains over the fixed order.
#
#   scripts/gpu/bench_fastest.sh OUTDIR      (FA4 importable, e.g. . /tmp/fa4site/env.sh)
#   SEQLENS=1024,2048,4096,8192,16384        the zoo's lengths (default: all five buckets 1k-16k)
#   ROUNDS=10 WARMUP=3                       bench's repetitions (its defaults)
#
# Expected time on one H100: bench (the whole zoo, 30 shapes, plus 6 default specs) about 2 min with
# FA4's compile cache cold and about 1 min warm, under the 4 minutes it is allowed (docs/bench.md,
# "How long it takes"); smoke of the zoo's classes about 1 min cold; the rest seconds.
# Everything printed lands in OUTDIR; summary.txt has the exit statuses, wall times and the table.
set -uo pipefail
out=${1:?usage: scripts/gpu/bench_fastest.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
export FA4DOCTOR_LEDGER="$out/ledger.json"
rm -f "$FA4DOCTOR_LEDGER"
seqlens=${SEQLENS:-1024,2048,4096,8192,16384}
. scripts/gpu/step.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$out/gpu.txt" 2>&1
step check.json python -m fa4doctor check --json
# Smoke vets classes, not lengths: the zoo's calls at 512 tokens (smoke's cap) prove the classes bench times.
python - > "$out/zoo-specs.json" <<'PY'
import json
from fa4doctor.smoke.zoo import ZOO
print(json.dumps([{"name": m.name, **m.spec.to_dict()} for m in ZOO], indent=1))
PY
step smoke.json python -m fa4doctor smoke --json --level quick --spec "$out/zoo-specs.json"
step bench.json python -m fa4doctor bench --json --seqlens "$seqlens" --rounds "${ROUNDS:-10}" --warmup "${WARMUP:-3}"
python -c "import json, sys; from fa4doctor.exporters.bench_view import render_bench; render_bench(json.load(open(sys.argv[1])))" \
    "$out/bench.json" > "$out/bench.txt" 2>&1
for policy in fastest priority; do
    export FA4DOCTOR_POLICY=$policy
    step "explain-d64-$policy.txt" python -m fa4doctor explain --heads 12 --head-dim 64 --seqlen-q 4096 --mask causal
    step "explain-d128-$policy.txt" python -m fa4doctor explain --heads 32/8 --head-dim 128 --seqlen-q 8192 --mask causal
    step "explain-d64-$policy.json" python -m fa4doctor explain --heads 12 --head-dim 64 --seqlen-q 4096 --mask causal --json
    step "explain-d128-$policy.json" python -m fa4doctor explain --heads 32/8 --head-dim 128 --seqlen-q 8192 --mask causal --json
done
unset FA4DOCTOR_POLICY
python - "$out" <<'PY' | tee -a "$out/summary.txt"
# Per zoo shape and direction on GPU 0: the best figure of the run, what `fastest` runs (within
# how much of the best) and what the fixed order runs (how much slower than `fastest`).
import json, pathlib, sys
from dataclasses import replace
from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.environment import Environment
from fa4doctor.probe.ledger import read_ledger

out = pathlib.Path(sys.argv[1])
bench = json.loads((out / "bench.json").read_text())
read = read_ledger(out / "ledger.json")
env = Environment.from_json((out / "check.json").read_text()).with_ledger(read.entries, read.speed)
gpu = bench["gpus"][0]["uuid"] if bench["gpus"] else None
label = lambda backend, kernel: backend + (f" {kernel}" if kernel else (" (torch's choice)" if backend == "sdpa" else ""))
print(f"{'shape':28} {'dir':7} {'best':24} {'fastest runs':24} {'of best':>8} {'priority runs':24} {'fastest gains':>13}")
worst = 1.0
for shape in bench["shapes"]:
    for direction in ("fwd", "fwd_bwd"):
        figures = {label(r["backend"], r["kernel"]): r["median_ms"] for r in bench["results"]
                   if r["shape"] == shape["name"] and r["direction"] == direction and r["outcome"] == "pass"
                   and r["gpu_uuid"] == gpu}
        if not figures:
            continue
        spec = AttentionSpec.from_dict(shape["spec"])
        spec = replace(spec, training=direction == "fwd_bwd")
        picks = []
        for policy in (Policy(order="fastest"), Policy()):
            d = decide(spec, env, policy, 0)
            kernel = d.sdpa_kernel if d.chosen and d.chosen.value == "sdpa" else None
            picks.append(label(d.chosen.value, kernel) if d.chosen else "none")
        best = min(figures, key=figures.get)
        fast, fixed = (figures.get(p) for p in picks)
        of_best = f"{fast / figures[best]:.3f}x" if fast else "-"
        gain = f"{fixed / fast:.3f}x" if fast and fixed else "-"
        if fast:
            worst = max(worst, fast / figures[best])
        print(f"{shape['name'][:28]:28} {direction:7} {best[:24]:24} {picks[0][:24]:24} {of_best:>8} {picks[1][:24]:24} {gain:>13}")
print(f"fastest's pick is within {100 * (worst - 1):.1f}% of the best figure of this run for every shape "
      "(a pick of an unvetted class falls back to the fixed order and may be further off)")
PY
