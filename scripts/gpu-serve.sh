#!/usr/bin/env bash
# Run `fa4doctor serve` on a GPU machine with FA4 installed for a few probe cycles and keep what it
# served: OUTDIR/metrics.txt (/metrics), OUTDIR/report.json (/report.json), OUTDIR/serve.log and
# OUTDIR/summary.txt. After the first smoke cycle a small bf16 workload calls the dispatcher on the
# GPU, so the dispatch counters carry real calls. Usage: scripts/gpu-serve.sh OUTDIR
# (2-9 minutes: the waits are bounded so it fits a 10-minute slot; SMOKE_WAIT=seconds, CYCLES=n).
set -euo pipefail
out=${1:?usage: scripts/gpu-serve.sh OUTDIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
cycles=${CYCLES:-3}

$py -m fa4doctor serve --host 127.0.0.1 --port "$port" --interval 20 --smoke-interval 3600 \
    --smoke-level quick --probe-timeout 240 --smoke-timeout 420 \
    --metrics-dir "$out/metrics" --ledger "$out/ledger.json" 2>"$out/serve.log" &
serve=$!
trap 'kill -TERM $serve 2>/dev/null || true' EXIT

get() {  # get URL: the body on stdout, non-zero on any failure (no curl needed)
    $py -c 'import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=10).read())' "$1" 2>/dev/null
}
sample() {  # sample NAME: the value of one unlabelled sample, 0 if absent
    get "$url/metrics" | awk -v n="$1" '$1 == n {print $2; found=1} END {if (!found) print 0}'
}
wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq "$limit"); do "$@" && return 0; sleep 1; done
    echo "gpu-serve: gave up waiting ${limit}s for $what" >&2; return 1
}
ready() { get "$url/readyz" >/dev/null; }
smoked() {  # a smoke child ran, or the daemon said why it skipped (GPUs busy, NVML unavailable)
    awk 'BEGIN {exit !('"$(sample fa4doctor_serve_smoke_runs_total)"' >= 1)}' ||
        get "$url/metrics" | grep -q '^fa4doctor_serve_smoke_skips_total{'
}
probed() { awk 'BEGIN {exit !('"$(sample fa4doctor_probe_cycles_total)"' >= '"$cycles"')}'; }

wait_until 300 "the first probe cycle" ready
wait_until "${SMOKE_WAIT:-360}" "the first smoke cycle" smoked || true
FA4DOCTOR_METRICS_DIR="$out/metrics/workload" $py - <<'PY' || echo "gpu-serve: workload failed" >&2
import torch
from fa4doctor.dispatch import attention
q = torch.randn(2, 1024, 16, 128, device="cuda", dtype=torch.bfloat16)
for mask in ("no_mask", "causal", "causal_bottom_right"):
    for _ in range(10):
        attention(q, q, q, attn_mask_type=mask)
torch.cuda.synchronize()
PY
wait_until 120 "$cycles probe cycles" probed || true
get "$url/metrics" >"$out/metrics.txt"
get "$url/report.json" >"$out/report.json"
{
    echo "date: $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true
    grep -E '^fa4doctor_(probe_up|probe_cycles_total|serve_smoke_runs_total|nvml_poll_up|backend_available|dispatch_calls_total|dispatch_fallbacks_total|smoke_success|smoke_cases)' "$out/metrics.txt" || true
    if command -v promtool >/dev/null; then
        promtool check metrics <"$out/metrics.txt" && echo "promtool check metrics: ok"
    fi
} | tee "$out/summary.txt"
kill -TERM $serve
wait $serve && echo "serve stopped cleanly (exit 0)" | tee -a "$out/summary.txt"
trap - EXIT
