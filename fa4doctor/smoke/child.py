"""The smoke child runs cases: one per GPU and backend, or per compile chunk, pinned to its GPU
by `CUDA_VISIBLE_DEVICES=<uuid>`.

Protocol: the parent starts `python -m fa4doctor.smoke.child --device cuda --preload fa4`;
the child imports the backends (timed), prints a `ready` line, then reads one JSON job from stdin:
`{"mode": "run"|"compile", "cases": [{"id", "backend", "spec"}]}`. For each case and direction it
prints `start` before touching the kernel and `result` after, one JSON object per line, on a
private copy of stdout (libraries' prints go to stderr). A crash or a hang therefore names the
case it happened in, and the parent restarts a child for the rest. Mode "bench" (`fa4doctor
bench`) times kernels instead of judging them: `bench_job.py`.

Kernels run through `fa4doctor.runtime.dispatcher.call_backend`, the production adapters, unless
`FA4DOCTOR_SMOKE_FAKE=/path/file.py:function` names a stand-in (the tests' fake backends).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
import zlib
from typing import Any, Callable

from fa4doctor.smoke.process import ENV_FAKE, EXIT_FATAL, directions



def load_call() -> Callable[..., Any]:
    fake = os.environ.get(ENV_FAKE)
    if not fake:
        from fa4doctor.runtime.dispatcher import call_backend
        return call_backend
    path, _, name = fake.rpartition(":")
    spec = importlib.util.spec_from_file_location("fa4doctor_smoke_fake", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def classify(exc: BaseException) -> tuple[str, str, bool]:
    """(outcome, detail, fatal) for an exception a backend raised."""
    import torch

    text = f"{type(exc).__name__}: {str(exc).strip()}"
    lines = [line for line in text.splitlines() if line.strip()]
    detail = (lines[0] if len(lines) < 3 else f"{lines[0]} ... {lines[-1]}")[:400]
    low = text.lower()
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in low:
        return "oom", detail, False
    # An asynchronous CUDA fault poisons the context: later calls in this process would fail too.
    if any(word in low for word in ("cuda error", "illegal memory access", "illegal instruction",
                                    "unspecified launch failure", "device-side assert")):
        return "crash", detail, True
    module = type(exc).__module__ or ""
    if (module.split(".")[0] in ("cutlass", "_mlir", "tvm_ffi", "triton")
            or "compil" in type(exc).__name__.lower() or "ptxas" in low or "nvrtc" in low):
        return "compile_failed", detail, False
    return "refused", detail, False


class Emitter:
    def __init__(self, stream):
        self.stream = stream

    def __call__(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()


def make_inputs(spec: dict, device: str, seed: int) -> dict:
    """q, k, v (bshd, or thd with cu_seqlens for variable length), the same on every device."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    from fa4doctor.runtime.inputs import DTYPES

    dtype = next(t for t, name in DTYPES.items() if name.value == spec["dtype"])
    hq, hk, d, dv = spec["num_heads_q"], spec["num_heads_kv"], spec["head_dim_qk"], spec["head_dim_v"]
    sq, sk = spec["seqlen_q"], spec["seqlen_kv"]
    kwargs: dict[str, Any] = {}
    if spec["qkv_format"] == "thd":
        # Three sequences of uneven, unaligned lengths; padding masks keep q and k lengths equal.
        lens_q = [sq, 3 * sq // 4 + 5, sq // 4 + 3]
        lens_k = lens_q if spec.get("same_seqlens", True) else [sk, 3 * sk // 4 + 5, sk // 4 + 3]
        cu = lambda lens: torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()],  # noqa: E731
                                       dtype=torch.int32, device=device)
        kwargs = dict(cu_seqlens_q=cu(lens_q), cu_seqlens_kv=cu(lens_k),
                      max_seqlen_q=max(lens_q), max_seqlen_kv=max(lens_k))
        shapes = [(sum(lens_q), hq, d), (sum(lens_k), hk, d), (sum(lens_k), hk, dv)]
    else:
        shapes = [(2, sq, hq, d), (2, sk, hk, d), (2, sk, hk, dv)]
    q, k, v = (torch.randn(s, generator=gen).to(dtype).to(device) for s in shapes)
    return dict(q=q, k=k, v=v, kwargs=kwargs, dtype=dtype, gen=gen)


def _call_kwargs(spec: dict, inputs: dict) -> dict:
    return dict(attn_mask_type=spec["attn_mask_type"], window_size=tuple(spec["window_size"]),
                softcap=spec["softcap"], qkv_format=spec["qkv_format"], **inputs["kwargs"])


def _output(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) else value


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def references(spec: dict, inputs: dict, grad_out, training: bool) -> dict:
    """Float64 and low-precision references of out (and dq, dk, dv when training)."""
    import torch

    from fa4doctor.smoke.reference import attention

    refs = {}
    kwargs = {k: v for k, v in _call_kwargs(spec, inputs).items()
              if k in ("attn_mask_type", "window_size", "softcap", "cu_seqlens_q", "cu_seqlens_kv")}
    for key, compute in (("ref", torch.float64), ("low", inputs["dtype"])):
        leaves = [inputs[n].detach().to(compute).requires_grad_(training) for n in "qkv"]
        out = attention(*leaves, compute_dtype=compute, **kwargs)
        grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype)) if training else ()
        refs[key] = dict(zip(("out", "dq", "dk", "dv"), [out.detach().double(),
                                                         *(g.double() for g in grads)]))
    return refs


def _timed(fn: Callable[[], Any], device: str, repeat: int) -> tuple[Any, float, float]:
    """Run `fn` `repeat` times: (last value, compile seconds, steady run seconds)."""
    times, value = [], None
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        value = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    steady = times[-1] if repeat > 1 else 0.0
    return value, max(0.0, times[0] - steady), steady


def run_direction(direction: str, call, case: dict, inputs: dict, refs: dict, device: str,
                  repeat: int) -> dict:
    from fa4doctor.smoke.reference import judge

    spec, backend = case["spec"], case["backend"]
    training = direction == "bwd"
    leaves = [inputs[n].detach().requires_grad_(spec["training"]) for n in "qkv"]
    forward = lambda: _output(call(backend, *leaves, **_call_kwargs(spec, inputs)))  # noqa: E731
    if training:
        import torch

        step = lambda: torch.autograd.grad(forward(), leaves, inputs["grad_out"])  # noqa: E731
        values, compile_s, run_s = _timed(step, device, repeat)
        names = ("dq", "dk", "dv")
    else:
        out, compile_s, run_s = _timed(forward, device, repeat)
        values, names = (out,), ("out",)
    checks = [judge(n, val, refs["ref"][n], refs["low"][n], inputs["dtype"], spec["softcap"])
              for n, val in zip(names, values)]
    bad = [c for c in checks if not c.ok]
    return dict(outcome="wrong_result" if bad else "pass", detail="; ".join(c.describe() for c in bad),
                errors={c.tensor: c.error for c in checks},
                tolerances={c.tensor: c.tolerance for c in checks},
                compile_seconds=compile_s, run_seconds=run_s)


def run_case(case: dict, call, device: str, repeat: int, emit: Emitter) -> bool:
    """Both directions of one case; False when the process must stop (its CUDA context is gone)."""
    import torch

    spec = case["spec"]
    inputs = make_inputs(spec, device, zlib.crc32(case["name"].encode()))
    out_shape = (*inputs["q"].shape[:-1], spec["head_dim_v"])
    inputs["grad_out"] = torch.randn(out_shape, generator=inputs["gen"]).to(inputs["dtype"]).to(device)
    refs = references(spec, inputs, inputs["grad_out"], spec["training"])
    for direction in directions(case):
        emit("start", id=case["id"], direction=direction)
        try:
            result = run_direction(direction, call, case, inputs, refs, device, repeat)
        except Exception as exc:  # the backend's own error is the finding, not ours
            outcome, detail, fatal = classify(exc)
            emit("result", id=case["id"], direction=direction, outcome=outcome, detail=detail)
            if fatal:
                return False
            if outcome == "oom" and device.startswith("cuda"):
                torch.cuda.empty_cache()
            return True  # the parent records the backward as skipped (process._with_skips)
        emit("result", id=case["id"], direction=direction, **result)
        if result["outcome"] != "pass":
            return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fa4doctor.smoke.child")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preload", default="")
    args = parser.parse_args(argv)
    emit = Emitter(os.fdopen(os.dup(1), "w"))
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    start = time.perf_counter()
    import torch

    from fa4doctor.names import BackendName
    from fa4doctor.probe.imports import MODULES

    errors = {}
    for name in filter(None, args.preload.split(",")):
        try:
            importlib.import_module(MODULES[BackendName(name)][0])  # what a caller imports first
        except Exception as exc:  # the case itself reports it as refused, with the message
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
    call = load_call()
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    emit("ready", import_seconds=time.perf_counter() - start, gpu_name=gpu, preload_errors=errors)
    job = json.loads(sys.stdin.readline() or "{}")
    if job.get("mode") == "bench":  # `fa4doctor bench`: timed, not judged (smoke/bench_job.py)
        from fa4doctor.smoke.bench_job import run_job

        return run_job(job, call, args.device, emit, classify)
    repeat = 1 if job.get("mode") == "compile" else 2
    for case in job.get("cases", []):
        if not run_case(case, call, args.device, repeat, emit):
            return EXIT_FATAL
    emit("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
