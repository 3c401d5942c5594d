#!/usr/bin/env bash
# The compiled hit path on the GPU machine: build it for the installed torch, prove it (the CPU
# equivalence tests, then the GPU numerics through it), and time attention() with and without it.
# Run from the repository root with FA4 installed; writes under $OUT (default /tmp/out).
#   RUNS="1 2 3"        tiny-call bench runs, each once through the compiled path and once through Python
#   METRICS_RUNS="1 2"  tiny-call runs through the compiled path with FA4DOCTOR_METRICS_DIR set
#   SHAPES="4,4096,16,128 ..."  larger calls through the compiled path
#   SKIP_TESTS=1        only build and time
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/fa4doctor-native-xdg} FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
bench() { python3 bench/dispatch_overhead.py --device cuda --backend fa4 "$@"; }
python3 -m fa4doctor native build 2>&1 | tee "$OUT/native-build.txt"
python3 -m fa4doctor native status 2>&1 | tee -a "$OUT/native-build.txt"
[ "${SKIP_TESTS:-0}" = 1 ] || FA4DOCTOR_NATIVE_SUITE=$XDG_CACHE_HOME python3 -m pytest -q -s -p no:cacheprovider \
    tests/runtime/test_native.py tests/cli/test_native_cli.py tests/gpu/test_gpu_numerics.py 2>&1 \
    | tee "$OUT/native-tests.txt" | tail -80
for run in ${RUNS-1 2 3}; do
    bench > "$OUT/bench-fa4-native-$run.txt" 2>&1
    FA4DOCTOR_NATIVE=0 bench > "$OUT/bench-fa4-python-$run.txt" 2>&1
done
for run in ${METRICS_RUNS-}; do
    FA4DOCTOR_METRICS_DIR=$(mktemp -d) bench > "$OUT/bench-fa4-native-metrics-dir-$run.txt" 2>&1
done
for shape in ${SHAPES-}; do
    bench --shape "$shape" --rounds 60 --block 20 > "$OUT/bench-fa4-native-shape-${shape//,/x}.txt" 2>&1
done
grep -H -E "^(added|control)" "$OUT"/bench-*.txt 2>/dev/null
