"""A bench job inside the smoke child (`child.py`, mode "bench"): inputs, bound kernels, events.

The job's cases come grouped by shape (`group`), each naming a backend and, for SDPA, the kernel
it is kept to (`kernel`, None for torch's own choice). Every case of a shape runs on the same
tensors, `batch` sequences of the spec's shape in `bshd`, and is timed by `timing.py`. Protocol:
`start` before a case's first call in a direction and again before each of its timed blocks (so a
crash is blamed on the case that was running), `tick` after each timed round (so the parent's
deadline measures a hang, not a long shape), `result` with the timing fields or the failure;
direction "bwd" is a forward and its backward timed together.

The kernel is the production adapter, bound once per case (`runtime/adapters`: what `attention()`
runs after its plan is made), unless `FA4DOCTOR_SMOKE_FAKE` names a stand-in, which is then called
as `fake(backend, q, k, v, sdpa_kernel=..., **keywords)`.
"""

from __future__ import annotations

import contextlib
import os
from itertools import groupby
from typing import Any, Callable

from fa4doctor.smoke.process import ENV_FAKE, EXIT_FATAL, directions
from fa4doctor.smoke.timing import ROUNDS, WARMUP, CudaTimer, Timed, WallTimer, interleave, warm

# What a bench call cannot hold: it times fixed-length calls, and these need per-call tensors.
UNSUPPORTED = ("varlen", "alibi", "learnable_sink", "bias", "kv_cache", "paged_kv", "context_parallel")


def unsupported(spec: dict) -> str | None:
    """Why `bench` cannot time `spec` (None: it can)."""
    used = [name for name in UNSUPPORTED if spec.get(name)]
    return f"bench times fixed-length (bshd) calls without {', '.join(used)}" if used else None


def _call_kwargs(spec: dict) -> dict:
    return dict(attn_mask_type=spec["attn_mask_type"], window_size=tuple(spec["window_size"]),
                softcap=spec["softcap"], dropout_p=spec["dropout_p"], deterministic=spec["deterministic"])


def tensors(spec: dict, batch: int, device: str) -> dict:
    """q, k, v and the gradient of the output, random, `batch` sequences in bshd."""
    import torch

    from fa4doctor.runtime.inputs import DTYPES

    dtype = next((t for t, name in DTYPES.items() if name.value == spec["dtype"]), None)
    if dtype is None:  # fp8: made in bf16, then cast (randn has no fp8 kernels)
        dtype = getattr(torch, {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}[spec["dtype"]])
    hq, hk, sq, sk = spec["num_heads_q"], spec["num_heads_kv"], spec["seqlen_q"], spec["seqlen_kv"]
    shapes = {"q": (batch, sq, hq, spec["head_dim_qk"]), "k": (batch, sk, hk, spec["head_dim_qk"]),
              "v": (batch, sk, hk, spec["head_dim_v"]), "grad_out": (batch, sq, hq, spec["head_dim_v"])}
    made = {name: torch.randn(shape, device=device).to(dtype) for name, shape in shapes.items()}
    if dtype not in DTYPES:
        made["grad_out"] = made["grad_out"].to(torch.bfloat16)
    return made


def _output(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) else value


def _bound(backend: str, q, k, v, kwargs: dict, training: bool) -> Callable[[], Any]:
    """The production adapter's run for this call, bound once (no selection, no counting)."""
    import torch

    from fa4doctor.names import BackendName
    from fa4doctor.runtime import inputs
    from fa4doctor.runtime.adapters import adapter

    with torch.set_grad_enabled(training):
        prepared = inputs.prepare(q, k, v, **kwargs)
    run = adapter(BackendName(backend)).bind(prepared.spec, prepared.scale)
    return lambda: _output(run(q, k, v, None, None, None))


def _context(kernel: str | None, training: bool, real: bool) -> Callable[[], Any]:
    """What each timed block runs inside: no autograd for a forward, SDPA kept to `kernel`."""
    import torch

    def enter() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if not training:
            stack.enter_context(torch.no_grad())
        if kernel is not None and real:
            from torch.nn.attention import sdpa_kernel

            from fa4doctor.runtime.adapters.sdpa import SDP_BACKENDS

            stack.enter_context(sdpa_kernel([SDP_BACKENDS[kernel]]))
        return stack
    return enter


def timed_case(case: dict, direction: str, made: dict, call, real: bool) -> Timed:
    """One case in one direction, ready to warm and time (binding errors surface on its first call)."""
    import torch

    training = direction == "bwd"
    q, k, v = (made[n].detach().requires_grad_(training) for n in "qkv")
    kwargs, backend, kernel = _call_kwargs(case["spec"]), case["backend"], case.get("kernel")
    state: dict[str, Any] = {}

    def forward() -> Any:
        if "run" not in state:  # bound on the first (warm-up) call, so its errors are the case's
            state["run"] = (_bound(backend, q, k, v, kwargs, training) if real else
                            lambda: _output(call(backend, q, k, v, sdpa_kernel=kernel, **kwargs)))
        return state["run"]()

    fn = (lambda: torch.autograd.grad(forward(), (q, k, v), made["grad_out"])) if training else forward
    return Timed(case["id"], direction, fn, _context(kernel, training, real))


def run_job(job: dict, call, device: str, emit, classify) -> int:
    """Every shape of the job, in order; the child's exit status (EXIT_FATAL: the context is gone)."""
    timer = CudaTimer() if device.startswith("cuda") else WallTimer()
    real = not os.environ.get(ENV_FAKE)
    for _, cases in groupby(job.get("cases", []), key=lambda c: c["group"]):
        if not run_shape(list(cases), call, device, timer, emit, classify, real):
            return EXIT_FATAL
    emit("done")
    return 0


def run_shape(cases: list[dict], call, device: str, timer, emit, classify, real: bool) -> bool:
    """Warm and time every case of one shape, direction by direction; False after a fatal failure."""
    why = unsupported(cases[0]["spec"])
    if why:
        for case in cases:
            emit("result", id=case["id"], direction="fwd", outcome="refused", detail=why)
        return True
    settings = cases[0].get("timing", {})
    made = tensors(cases[0]["spec"], cases[0]["batch"], device)
    failed: set[int] = set()
    try:
        for direction in ("fwd", "bwd"):
            todo = [c for c in cases if direction in directions(c) and c["id"] not in failed]
            if not _time_direction(todo, direction, made, call, real, settings, timer, emit, classify, failed):
                return False
    finally:
        made.clear()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
    return True


def _time_direction(todo, direction, made, call, real, settings, timer, emit, classify, failed) -> bool:
    timed = []
    for case in todo:
        emit("start", id=case["id"], direction=direction)
        one = timed_case(case, direction, made, call, real)
        if warm(one, settings.get("warmup", WARMUP), timer, classify):
            timed.append(one)
            continue
        failed.add(case["id"])
        _emit_failure(emit, one)
        if one.failure[2]:
            return False
    fine = interleave(timed, settings.get("rounds", ROUNDS), timer, classify, tick=lambda: emit("tick"),
                      before=lambda one: emit("start", id=one.id, direction=one.direction))
    for one in timed:
        if one.failure is not None:
            failed.add(one.id)
            _emit_failure(emit, one)
        elif fine:
            emit("result", id=one.id, direction=direction, **one.summary())
    return fine


def _emit_failure(emit, one: Timed) -> None:
    outcome, detail, _ = one.failure
    emit("result", id=one.id, direction=one.direction, outcome=outcome, detail=detail)
