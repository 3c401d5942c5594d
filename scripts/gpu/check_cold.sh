#!/usr/bin/env bash
# `fa4doctor check --json` cold (its import cache empty: a node's first check) and warm (the cache
# filled), against `python -m torch.utils.collect_env`, alternating A B A B, wall seconds each
# (issue 14). On a GPU node with FA4 installed a cold check imports torch and FA4 once, in one child,
# so the floor of a cold check that proves imports is printed beside it: a bare `import torch` and
# a bare `import flash_attn.cute` (which imports torch).
#
#   scripts/gpu/check_cold.sh [PAIRS]      (default 3)
set -uo pipefail
cd "$(dirname "$0")/../.."
pairs=${1:-3}
wall() { local start; start=$(date +%s.%N); "$@" > /dev/null 2>&1; echo "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')"; }
warm=$(mktemp -d)
XDG_CACHE_HOME=$warm python -m fa4doctor check --json > /dev/null 2>&1  # fills the warm cache
for i in $(seq "$pairs"); do
    cold=$(mktemp -d)
    a=$(XDG_CACHE_HOME=$cold wall python -m fa4doctor check --json)
    b=$(wall python -m torch.utils.collect_env)
    c=$(XDG_CACHE_HOME=$warm wall python -m fa4doctor check --json)
    t=$(wall python -c "import torch")
    f=$(wall python -c "import flash_attn.cute")
    echo "pair $i: check cold ${a} s, collect_env ${b} s, check warm ${c} s, import torch ${t} s, import flash_attn.cute ${f} s"
    rm -rf "$cold"
done
