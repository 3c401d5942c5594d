#!/usr/bin/env bash
# The GPU proof of "stay true as FA4 moves" (FA4 4.0.0b40): check, smoke thorough (FA4, with each
# failure's neighbours mapped) and standard, explain at head dims 40, 72, 64 and 128, then
# scripts/gpu/b40_truth.py (every training call at a failing head dim right against float64).
#
#   scripts/gpu-b40.sh OUTDIR        (FA4 importable, e.g. . /tmp/fa4site/env.sh)
# Everything printed lands in OUTDIR; `summary.txt` has the exit statuses and wall times.
set -uo pipefail
out=${1:?usage: scripts/gpu-b40.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export FA4DOCTOR_LEDGER="$out/ledger.json"
scratch="${TMPDIR:-/tmp}/fa4doctor-gpu-b40.$$"
export FLASH_ATTENTION_CUTE_DSL_CACHE_DIR="$scratch/cute-dsl-cache" XDG_CACHE_HOME="$scratch/xdg"
rm -rf "$scratch" "$FA4DOCTOR_LEDGER"
trap 'rm -rf "$scratch"' EXIT
cd "$(dirname "$0")/.."
. scripts/gpu/step.sh
step check-before.txt python -m fa4doctor check
step thorough-fa4.json python -m fa4doctor smoke --json --level thorough --backend fa4
step standard.json python -m fa4doctor smoke --json --level standard --backend fa4 --backend sdpa
step check-after.txt python -m fa4doctor check
step check-after.json python -m fa4doctor check --json
for dim in 40 72 64 128; do
    step "explain-d$dim.txt" python -m fa4doctor explain --head-dim "$dim" --heads 16 --seqlen-q 4096 --mask causal
done
step truth.txt python scripts/gpu/b40_truth.py
python - "$out" <<'PY' | tee -a "$out/summary.txt"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for name in ("thorough-fa4.json", "standard.json"):
    try:
        report = json.loads((out / name).read_text())
    except (OSError, ValueError):
        print(f"{name}: no report"); continue
    cases = report["cases"]
    bad = [c for c in cases if c["outcome"] not in ("pass", "skipped")]
    print(f"{name}: {len(cases)} results, {len(bad)} failed; phases {report['phases']}")
    for c in bad:
        print(f"    {c['outcome']}: {c['case']} {c['direction']}: {(c.get('detail') or '')[:90]}")
PY
