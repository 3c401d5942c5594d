#!/usr/bin/env bash
# The GPU proofs of issues 15 and 16 on one node with FA4 installed (. /tmp/fa4site/env.sh), in two
# parts that each fit one device call (10 minutes):
#
#   scripts/gpu/proofs.sh OUTDIR fastest        bench_fastest.sh (smoke + bench of the zoo, explain
#                                               under both policies, fastest's pick against the best),
#                                               then bench/policy_overhead.py on that ledger: ~5 min
#   scripts/gpu/proofs.sh OUTDIR overhead       bench/policy_overhead.py on the compiled hit path
#                                               (`fa4doctor native build` first): ~1 min
#   scripts/gpu/proofs.sh OUTDIR transformers   scripts/gpu/transformers_models.py (transformers on
#                                               PYTHONPATH), scripts/gpu/padded_gather.py: ~3 min
#   scripts/gpu/proofs.sh OUTDIR check          bench/check_speed.py --cold 3: check cold and warm
#                                               against collect_env and the bare imports: ~2 min
#   BEFORE=DIR scripts/gpu/proofs.sh OUTDIR padded
#                                               padded training steps of this tree against DIR (a
#                                               folder holding another revision's fa4doctor/, e.g.
#                                               `git archive REV fa4doctor | tar -x -C DIR`), in turn,
#                                               twice, and scripts/gpu/padded_gather.py: ~4 min
#
# OUTDIR/<part>.tar.gz holds everything printed (the device returns at most 8 files).
set -uo pipefail
out=${1:?usage: scripts/gpu/proofs.sh OUTDIR fastest|overhead|transformers|check|padded}
part=${2:?usage: scripts/gpu/proofs.sh OUTDIR fastest|overhead|transformers|check|padded}
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/cute-cache
work=$(mktemp -d)/$part
mkdir -p "$work"
case $part in
    fastest)
        bash scripts/gpu/bench_fastest.sh "$work"
        FA4DOCTOR_LEDGER=$work/ledger.json timeout 120 python bench/policy_overhead.py --device cuda --backend fa4 \
            --rounds 100 --block 200 > "$work/policy-overhead.txt" 2>&1
        echo "policy_overhead: exit $?" >> "$work/summary.txt"
        ;;
    overhead)
        python -m fa4doctor native build > "$work/native-build.txt" 2>&1
        echo "native build: exit $?" >> "$work/summary.txt"
        timeout 200 python bench/policy_overhead.py --device cuda --backend fa4 --rounds 100 --block 200 \
            > "$work/policy-overhead.txt" 2>&1
        echo "policy_overhead: exit $?" >> "$work/summary.txt"
        ;;
    transformers)
        FA4DOCTOR_LEDGER=$work/ledger.json timeout 500 python scripts/gpu/transformers_models.py \
            > "$work/transformers-models.txt" 2> "$work/transformers-models.stderr"
        echo "transformers_models: exit $?" >> "$work/summary.txt"
        timeout 60 python scripts/gpu/padded_gather.py > "$work/padded-gather.txt" 2>&1
        echo "padded_gather: exit $?" >> "$work/summary.txt"
        ;;
    check)
        timeout 240 python bench/check_speed.py --cold 3 > "$work/check-cold.txt" 2>&1
        echo "check_speed --cold: exit $?" >> "$work/summary.txt"
        timeout 120 python bench/check_speed.py --runs 9 --breakdown-runs 3 > "$work/check-speed.txt" 2>&1
        echo "check_speed: exit $?" >> "$work/summary.txt"
        ;;
    padded)
        before=${BEFORE:?padded: set BEFORE to a folder holding the fa4doctor/ to compare against}
        timeout 30 python scripts/gpu/padded_gather.py > "$work/padded-gather.txt" 2>&1
        echo "padded_gather: exit $?" >> "$work/summary.txt"
        for rep in 1 2; do
            for tree in after before; do
                extra=$([ "$tree" = before ] && echo "$before:" || true)
                PYTHONPATH=$extra$PYTHONPATH PARTS=models MODELS=llama,qwen2 timeout 100 \
                    python scripts/gpu/transformers_models.py > "$work/models-$tree-$rep.txt" 2> /dev/null
                echo "models $tree $rep: exit $?" >> "$work/summary.txt"
            done
        done
        ;;
    *) echo "unknown part '$part' (valid: fastest, overhead, transformers, check, padded)" >&2; exit 2 ;;
esac
tar -czf "$out/$part.tar.gz" -C "$(dirname "$work")" "$part"
cat "$work/summary.txt"
