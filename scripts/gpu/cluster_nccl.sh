#!/usr/bin/env bash
# fa4doctor cluster over NCCL, one rank per GPU, then FA4DOCTOR_UNIFORM=1 in a real training-style
# process (scripts/gpu/cluster_uniform.py). NOT RUN YET: no machine with several GPUs was lent
# while this was written (docs/cluster.md); keep what it writes under docs/validation/ when it is.
#   one node:      bash scripts/gpu/cluster_nccl.sh
#   several nodes: NNODES=2 NODE_RANK=<0..> MASTER_ADDR=<node 0's address> bash scripts/gpu/cluster_nccl.sh
#                  (on every node, the same MASTER_ADDR and MASTER_PORT)
#   NPROC=8 TIMEOUT=300 OUT=/tmp/out   ranks per node (default: every GPU), seconds, output folder
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
NPROC=${NPROC:-$(nvidia-smi -L | wc -l)}
NNODES=${NNODES:-1}; NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}; MASTER_PORT=${MASTER_PORT:-29500}; TIMEOUT=${TIMEOUT:-300}
launch() {
    torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \
        --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" "$@"
}
nvidia-smi -L > "$OUT/gpus-node$NODE_RANK.txt"
python3 -m fa4doctor check --json > "$OUT/check-node$NODE_RANK.json"; echo "check exit $?"
for backend in nccl gloo; do  # the verdict over NCCL (its all_reduce proves NCCL), and over gloo to compare
    launch -m fa4doctor cluster --dist-backend "$backend" --timeout "$TIMEOUT" \
        > "$OUT/cluster-$backend.txt" 2> "$OUT/cluster-$backend.err"
    echo "torchrun exit $? (rank 0's status is in $OUT/cluster-$backend.err: exitcode)" | tee -a "$OUT/cluster-$backend.txt"
done
launch -m fa4doctor cluster --dist-backend nccl --timeout "$TIMEOUT" --json > "$OUT/cluster-nccl.json" 2>/dev/null
FA4DOCTOR_UNIFORM=1 FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 launch scripts/gpu/cluster_uniform.py \
    > "$OUT/cluster-uniform.txt" 2>&1
echo "uniform exit $?" | tee -a "$OUT/cluster-uniform.txt"
cat "$OUT/cluster-nccl.txt"
