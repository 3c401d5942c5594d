"""What each rank runs in the FA4DOCTOR_UNIFORM test (tests/cluster/launch.py forks the ranks).

Rank r judges the snapshot in FA4DOCTOR_TEST_SNAPSHOT (set per rank by the launcher) with
`agree()`, then runs `attention()` on CPU tensors with FA4DOCTOR_UNIFORM=1 and writes what it saw to
DIR/uniform<r>.json: the verdict, the backend each plan chose, the plan-time exchanges, the error
against a float64 reference, and the error every rank raised where no backend is common to all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _reference(q, k, v, causal: bool):
    import torch

    q64, k64, v64 = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = q64 @ k64.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:  # top-left, as TE's and fa4doctor's `causal`
        keep = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return (scores.softmax(-1) @ v64).transpose(1, 2)


def _call(attention, seed: int, seqlen: int, head_dim: int, mask: str) -> float:
    import torch

    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, seqlen, 4, head_dim, generator=g, dtype=torch.float32) for _ in range(3))
    out = attention(q, k, v, attn_mask_type=mask)
    want = _reference(q, k, v, causal=mask == "causal")
    return float((out.double() - want).abs().max() / want.abs().max())


def uniform(out: Path, rank: int, *_: str) -> None:
    import torch.distributed as dist

    from fa4doctor.dispatch import agree, attention
    from fa4doctor.dispatch.reasons import DispatchError
    from fa4doctor.environment import load_environment
    from fa4doctor.runtime import dispatcher, uniform as agreed

    dist.init_process_group("gloo")
    os.environ["FA4DOCTOR_UNIFORM"] = "1"
    verdict = agree(env=load_environment(os.environ["FA4DOCTOR_TEST_SNAPSHOT"]))
    seeded = len(agreed._agreed)
    errors = [_call(attention, 100 + rank, 16, 16, "causal"), _call(attention, 200 + rank, 24, 16, "causal"),
              _call(attention, 300 + rank, 8, 32, "no_mask")]
    chosen = sorted({plan.decision.chosen.value for plan in dispatcher._plans.values()})
    exchanges = agreed.exchanges
    if rank == 3:  # this rank alone cannot run the next class: every rank must refuse it, together
        os.environ["FA4DOCTOR_DISABLE"] = "sdpa"
    try:
        _call(attention, 400, 8, 64, "no_mask")
        refused = None
    except DispatchError as exc:
        refused = f"{type(exc).__name__}: {exc}".splitlines()[0]
    dist.barrier()  # every rank is here: none was left waiting in an exchange
    Path(out, f"uniform{rank}.json").write_text(json.dumps({
        "verdict": verdict.to_plain(), "seeded": seeded, "errors": errors, "chosen": chosen,
        "exchanges": exchanges, "refused": refused}))
    dist.destroy_process_group()
