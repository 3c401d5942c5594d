"""FA4DOCTOR_UNIFORM=1 in a training-style process on GPUs (run by scripts/gpu/cluster_nccl.sh under
torchrun, one rank per GPU, NCCL): `agree()` gives every rank the job's verdict, then `attention()`
runs bf16 calls on every rank and each rank prints the backend its plans chose and the error
against a float64 reference. Not run yet: no machine with several GPUs was lent (docs/cluster.md).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from fa4doctor.dispatch import AttentionSpec, agree, attention
from fa4doctor.runtime import dispatcher, uniform


def reference(q, k, v):
    q64, k64, v64 = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = (q64 @ k64.transpose(-1, -2)) / q.shape[-1] ** 0.5
    keep = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device).tril()
    return (scores.masked_fill(~keep, float("-inf")).softmax(-1) @ v64).transpose(1, 2)


def main() -> None:
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    spec = AttentionSpec(dtype="bf16", head_dim_qk=128, num_heads_q=16, seqlen_q=2048, attn_mask_type="causal")
    verdict = agree([("bf16_d128_causal_train", spec)])
    if rank == 0:
        from fa4doctor.exporters.cluster_view import render_cluster

        print(render_cluster(verdict.to_plain()), flush=True)
    g = torch.Generator(device="cuda").manual_seed(rank)
    errors = []
    for seqlen in (2048, 1024):  # one class: one exchange at most (none: agree() seeded it)
        q, k, v = (torch.randn(2, seqlen, 16, 128, device="cuda", dtype=torch.bfloat16, generator=g,
                               requires_grad=True) for _ in range(3))
        out = attention(q, k, v, attn_mask_type="causal")
        want = reference(q, k, v)
        errors.append(float((out.double() - want).abs().max() / want.abs().max()))
    chosen = sorted({p.decision.chosen.value for p in dispatcher._plans.values()})
    print(f"rank {rank}: chosen {chosen}, exchanges {uniform.exchanges}, max relative error "
          f"{max(errors):.2e}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
