#!/usr/bin/env bash
# The GPU validation run of issue 6: every smoke level for FA4 and SDPA on this node, the JSON
# reports and the ledger kept under OUTDIR, then a summary with the wall time of each phase, and
# `fa4doctor explain` on whatever failed (the dispatcher must refuse it on this node).
#
#   scripts/gpu-smoke.sh OUTDIR
#
# The first quick run starts from an empty FA4 compile cache (cold), the second reuses it (warm).
# FA4 must be importable (e.g. installed with `pip install --target DIR` and DIR on PYTHONPATH).
# Exit status: 0 all passed, 3 some case failed, 1 a run failed to produce a report.
set -uo pipefail
out=${1:?usage: scripts/gpu-smoke.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export FA4DOCTOR_LEDGER="$out/ledger.json"
# A fresh compile cache outside OUTDIR (compiled kernels do not belong in a report directory).
export FLASH_ATTENTION_CUTE_DSL_CACHE_DIR="${TMPDIR:-/tmp}/fa4doctor-gpu-smoke-cache.$$"
rm -rf "$FLASH_ATTENTION_CUTE_DSL_CACHE_DIR" "$FA4DOCTOR_LEDGER"
trap 'rm -rf "$FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"' EXIT
cd "$(dirname "$0")/.."

python -m fa4doctor check --json --no-imports > "$out/env.json" 2> "$out/env.stderr" || true
status=0
run() {  # run NAME ARGS...: one smoke run, its report in OUTDIR/NAME.json
    local name=$1; shift
    local start=$SECONDS
    python -m fa4doctor smoke --json "$@" > "$out/$name.json" 2> "$out/$name.stderr"
    local code=$?
    echo "$name: exit $code, $((SECONDS - start)) s wall (fa4doctor smoke $*)"
    if [ "$code" -eq 1 ] || [ "$code" -eq 2 ]; then status=1; elif [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then status=3; fi
}
run quick-cold --level quick --backend fa4 --backend sdpa
run quick-warm --level quick --backend fa4 --backend sdpa
run standard --level standard --backend fa4 --backend sdpa
run thorough-fa4 --level thorough --backend fa4
run thorough-sdpa --level thorough --backend sdpa

python - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"\n{'run':<14}{'cases':>6}{'pass':>6}{'fail':>6}{'skip':>6}{'import s':>10}{'compile s':>11}{'run s':>8}{'total s':>9}")
failed = {}
for name in ("quick-cold", "quick-warm", "standard", "thorough-fa4", "thorough-sdpa"):
    try:
        report = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError):
        print(f"{name:<14} no report (see {name}.stderr)")
        continue
    cases, p = report["cases"], report["phases"]
    n = {k: sum(c["outcome"] == k for c in cases) for k in ("pass", "skipped")}
    bad = [c for c in cases if c["outcome"] not in ("pass", "skipped")]
    print(f"{name:<14}{len(cases):>6}{n['pass']:>6}{len(bad):>6}{n['skipped']:>6}{p['import_seconds']:>10.1f}"
          f"{p['compile_seconds']:>11.1f}{p['run_seconds']:>8.1f}{p['total_seconds']:>9.1f}")
    for c in bad:
        print(f"    {c['outcome']}: {c['case']} {c['direction']} gpu {c['gpu']}: {c['detail']}")
        spec = dict(c["spec"], name=f"{c['case']} {c['direction']}")
        if c["direction"] == "fwd":
            spec["training"] = False
        failed.setdefault(spec["name"], spec)
(out / "failed-specs.json").write_text(json.dumps({"specs": list(failed.values())}, indent=1))
print(f"\n{len(failed)} failed case(s); specs in {out / 'failed-specs.json'}")
PY
if [ -s "$out/failed-specs.json" ] && python -c "import json,sys; sys.exit(not json.load(open('$out/failed-specs.json'))['specs'])"; then
    echo; echo "The dispatcher on this node, with the ledger of this run:"
    python -m fa4doctor explain --env "$out/env.json" --ledger "$FA4DOCTOR_LEDGER" --spec "$out/failed-specs.json" \
        | tee "$out/explain-failed.txt"
fi
echo "reports, ledger and env snapshot in $out"
exit "$status"
