#!/usr/bin/env bash
# The GPU validation run of issue 6: every smoke level for FA4 and SDPA on this node, the JSON
# reports and the ledger kept under OUTDIR, then a summary with the wall time of each phase, and
# `fa4doctor explain` on whatever failed (the dispatcher must refuse it on this node).
#
#   scripts/gpu-smoke.sh OUTDIR              (QUICK_ONLY=1: the quick runs alone)
#
# Quick runs: `quick-first` starts with nothing cached (no FA4 kernels, and, where the installation
# has no bytecode, none in fa4doctor's cache either); `quick-cold` again with an empty FA4 compile
# cache (the bytecode now kept); `quick-warm`, `quick-warm2` and `quick-warm3` reuse both.
# FA4 must be importable (e.g. installed with `pip install --target DIR` and DIR on PYTHONPATH).
# Exit status: 0 all passed, 3 some case failed, 1 a run failed to produce a report.
set -uo pipefail
out=${1:?usage: scripts/gpu-smoke.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export FA4DOCTOR_LEDGER="$out/ledger.json"
# A fresh compile cache outside OUTDIR (compiled kernels do not belong in a report directory).
scratch="${TMPDIR:-/tmp}/fa4doctor-gpu-smoke.$$"
export FLASH_ATTENTION_CUTE_DSL_CACHE_DIR="$scratch/cute-dsl-cache" XDG_CACHE_HOME="$scratch/xdg"
rm -rf "$scratch" "$FA4DOCTOR_LEDGER"
trap 'rm -rf "$scratch"' EXIT
cd "$(dirname "$0")/.."

python -m fa4doctor check --json --no-imports > "$out/env.json" 2> "$out/env.stderr" || true
status=0
run() {  # run NAME ARGS...: one smoke run, its report in OUTDIR/NAME.json
    local name=$1; shift
    local start; start=$(date +%s.%N)
    python -m fa4doctor smoke --json "$@" > "$out/$name.json" 2> "$out/$name.stderr"
    local code=$?
    echo "$name: exit $code, $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}') s wall (fa4doctor smoke $*)"
    if [ "$code" -eq 1 ] || [ "$code" -eq 2 ]; then status=1; elif [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then status=3; fi
}
run quick-first --level quick --backend fa4 --backend sdpa
rm -rf "$FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"
run quick-cold --level quick --backend fa4 --backend sdpa
run quick-warm --level quick --backend fa4 --backend sdpa
run quick-warm2 --level quick --backend fa4 --backend sdpa
run quick-warm3 --level quick --backend fa4 --backend sdpa
echo "bytecode kept for the children: $(find "$XDG_CACHE_HOME/fa4doctor/pycache" -name '*.pyc' 2>/dev/null | wc -l) files"
if [ -z "${QUICK_ONLY:-}" ]; then
    run standard --level standard --backend fa4 --backend sdpa
    run thorough-fa4 --level thorough --backend fa4
    run thorough-sdpa --level thorough --backend sdpa
fi

python - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"\n{'run':<14}{'cases':>6}{'pass':>6}{'fail':>6}{'skip':>6}{'import s':>10}{'compile s':>11}{'run s':>8}{'total s':>9}")
failed = {}
for name in ("quick-first", "quick-cold", "quick-warm", "quick-warm2", "quick-warm3", "standard", "thorough-fa4",
             "thorough-sdpa"):
    try:
        report = json.loads((out / f"{name}.json").read_text())
    except OSError:
        continue  # not run (QUICK_ONLY)
    except ValueError:
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
if python -c "import json,sys; sys.exit(not json.load(open('$out/failed-specs.json'))['specs'])"; then
    echo; echo "The dispatcher on this node, with the ledger of this run:"
    python -m fa4doctor explain --env "$out/env.json" --ledger "$FA4DOCTOR_LEDGER" --spec "$out/failed-specs.json" \
        | tee "$out/explain-failed.txt"
fi
echo "reports, ledger and env snapshot in $out"
exit "$status"
