"""What `FA4DOCTOR_POLICY=fastest` costs beside `priority`, per call and per plan (issue 15).

The policy is read when a plan is made, never on the call path, so a call under `fastest` should
cost what it costs under `priority`. Measured side by side in one run, both printed:

- per call: `attention()` under each policy and the backend called by hand (`direct`, exactly the
  adapter's call: bench/dispatch_overhead.py), timed in blocks interleaved round by round in a
  shuffled order; `added` is the median over rounds of (attention - direct) in the same round,
  with its 95% bootstrap interval. The policy variable changes between blocks; each policy keeps
  its own plan (the call's key holds the variable), so every timed call is a hit.
- per plan: the rules' decision without its cache (`decide.__wrapped__`) for the same call under
  each policy, on this node's environment and ledger (`fastest` ranks the ledger's speed records:
  how many there are is printed). A plan is made once per call class, so this is paid once per
  class, not per call.

    python bench/policy_overhead.py                                 # CPU, SDPA
    python bench/policy_overhead.py --device cuda --backend fa4     # GPU node, after `fa4doctor bench`

Targets: `attention()` adds at most 3 us a call on a 2-core CPU and at most 2% of a tiny direct
FA4 call on the GPU (bench/dispatch_overhead.py), under either policy.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from dispatch_overhead import add_call_options, block, call_tensors, exact_call, only_plan, paired  # bench/

POLICIES = ("priority", "fastest")


def per_call(direct, dispatched, args, rounds: int, calls: int, sync) -> dict[str, list[float]]:
    rows = {"direct": (None, direct), **{p: (p, dispatched) for p in POLICIES}}
    times = {name: [] for name in rows}
    order, shuffle = list(rows), random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            policy, fn = rows[name]
            if policy:
                os.environ["FA4DOCTOR_POLICY"] = policy
            times[name].append(block(fn, args, calls, sync))
    return times


def per_plan(device: str, repeats: int) -> dict[str, list[float]]:
    """Each zoo shape's training call (`fa4doctor bench`'s, so `fastest` finds its records)."""
    from dataclasses import replace

    from fa4doctor.dispatch.policy import Policy
    from fa4doctor.dispatch.selection import decide
    from fa4doctor.runtime import local_env
    from fa4doctor.smoke.zoo import ZOO_NAMES, zoo_shapes

    specs = [replace(shape.spec, device=device) for shape in zoo_shapes(ZOO_NAMES)]
    env = local_env.environment(need_gpus=device == "cuda")
    uncached = decide.__wrapped__
    times = {p: [] for p in POLICIES}
    for _ in range(repeats):
        for policy in POLICIES:
            start = time.perf_counter()
            for spec in specs:
                uncached(spec, env, Policy(order=policy), 0)
            times[policy].append((time.perf_counter() - start) / len(specs) * 1e6)
    print(f"ledger: {len(env.ledger)} smoke entries, {len(env.speed)} speed records; {len(specs)} zoo calls")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_call_options(parser)
    args = parser.parse_args()
    os.environ["FA4DOCTOR_BACKEND"] = args.backend  # time exactly this backend behind attention()

    import torch

    from fa4doctor.dispatch import attention
    from fa4doctor.runtime import dispatcher as runtime

    q, k, v, dtype, sync = call_tensors(args)
    dispatched = lambda q, k, v: attention(q, k, v, attn_mask_type="causal")  # noqa: E731
    with torch.inference_mode():
        os.environ["FA4DOCTOR_POLICY"] = "priority"
        dispatched(q, k, v)  # the first decision; FA4 compiles here
        plan = only_plan()
        direct = exact_call(args.backend, plan)
        for policy in POLICIES:
            os.environ["FA4DOCTOR_POLICY"] = policy
            dispatched(q, k, v)
        per_call(direct, dispatched, (q, k, v), 2, 20, sync)  # warm-up: allocator, caches
        times = per_call(direct, dispatched, (q, k, v), args.rounds, args.block, sync)
    plans = per_plan(args.device, 20)
    chosen = {key[-1].order: plan.decision.chosen.value for key, plan in runtime._classes.items()}  # plan_class()
    print(f"device={args.device} backend={args.backend} shape={args.shape} dtype={str(dtype).split('.')[-1]} "
          f"mask=causal torch={torch.__version__} path={'python' if attention is runtime.python_attention else 'native'} "
          f"calls={args.rounds * args.block} per row, median of {args.rounds} blocks; chosen {chosen}")
    d = statistics.median(times["direct"])
    print(f"direct            {d:9.2f} us/call (the adapter's backend call, by hand)")
    for policy in POLICIES:
        added, lo, hi = paired(times, policy, "direct")
        print(f"added, {policy:9} {added:9.2f} us/call ({added / d * 100:+.1f}% of direct; 95% interval "
              f"{lo:.2f} to {hi:.2f} us)")
    gap, lo, hi = paired(times, "fastest", "priority")
    print(f"fastest - priority {gap:8.2f} us/call (95% interval {lo:.2f} to {hi:.2f} us)")
    for policy in POLICIES:
        print(f"plan, {policy:9}  {statistics.median(plans[policy]):9.1f} us/decision (uncached rules, paid once per "
              f"call class; median over {len(plans[policy])} passes of the zoo's calls)")


if __name__ == "__main__":
    main()
