# Sourced by the GPU scripts, after they set `out`: `step NAME COMMAND...` runs COMMAND with its
# stdout in $out/NAME and its stderr in $out/NAME.stderr, and appends its exit status and wall time
# to $out/summary.txt (and prints that line).
step() {
    local name=$1; shift
    local start; start=$(date +%s.%N)
    "$@" > "$out/$name" 2> "$out/$name.stderr"
    local code=$?
    echo "$name: exit $code, $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s ($*)" \
        | tee -a "$out/summary.txt"
}
