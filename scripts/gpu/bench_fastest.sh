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
python scripts/gpu/fastest_table.py "$out" | tee -a "$out/summary.txt"
