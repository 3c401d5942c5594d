"""Fake backends for the smoke tests: each stands in for `call_backend` inside a smoke child.

They compute attention correctly in float32 (from fa4doctor's own reference) unless their job is
to misbehave: wrong gradients, a wrong output, a crash, a hang, a refusal, a compile error, OOM.
"""

from __future__ import annotations

import os
import signal
import time

import torch

from fa4doctor.smoke.reference import attention


def correct(backend, q, k, v, **kw):
    names = ("attn_mask_type", "window_size", "softcap", "cu_seqlens_q", "cu_seqlens_kv")
    out = attention(q, k, v, compute_dtype=torch.float32, **{n: kw[n] for n in names if n in kw})
    return out.to(q.dtype), None


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.5  # 50% too large: a kernel that gets dq wrong


def wrong_dq(backend, q, k, v, **kw):
    return correct(backend, _ScaleGrad.apply(q), k, v, **kw)


def wrong_out(backend, q, k, v, **kw):
    out, lse = correct(backend, q, k, v, **kw)
    return out + 0.25, lse


def tiny_noise(backend, q, k, v, **kw):
    """Right within the dtype's own rounding: must pass."""
    out, lse = correct(backend, q, k, v, **kw)
    return out * (1 + 2.0 ** -9), lse


def nan_out(backend, q, k, v, **kw):
    out, lse = correct(backend, q, k, v, **kw)
    return out * float("nan"), lse


def refuse(backend, q, k, v, **kw):
    raise AssertionError("inputs must be float16, bfloat16, fp8 e4m3fn, or fp8 e5m2")


class CompilationError(RuntimeError):
    pass


def compile_error(backend, q, k, v, **kw):
    raise CompilationError("ptxas fatal: unresolved extern function")


def oom(backend, q, k, v, **kw):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def cuda_fault(backend, q, k, v, **kw):
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def segfault(backend, q, k, v, **kw):
    os.kill(os.getpid(), signal.SIGSEGV)


def hang(backend, q, k, v, **kw):
    time.sleep(3600)


def _head_dim(q):
    return q.shape[-1]


def crash_d64(backend, q, k, v, **kw):
    """Crashes the process for head dim 64 only: the run must go on for the others."""
    if _head_dim(q) == 64:
        os.kill(os.getpid(), signal.SIGSEGV)
    return correct(backend, q, k, v, **kw)


def hang_d64(backend, q, k, v, **kw):
    if _head_dim(q) == 64:
        time.sleep(3600)
    return correct(backend, q, k, v, **kw)


def bwd_wrong_d96(backend, q, k, v, **kw):
    """Wrong dq for head dim 96 only (what the thorough level exists to find)."""
    return wrong_dq(backend, q, k, v, **kw) if _head_dim(q) == 96 else correct(backend, q, k, v, **kw)


# One misbehaviour per head dim, so one smoke run exercises every outcome (and the restarts).
BY_HEAD_DIM = {8: refuse, 16: compile_error, 24: oom, 32: wrong_out, 40: nan_out, 48: cuda_fault,
               56: segfault, 64: wrong_dq, 72: hang}


def by_head_dim(backend, q, k, v, **kw):
    return BY_HEAD_DIM.get(_head_dim(q), correct)(backend, q, k, v, **kw)


def wrong_on_bad_gpu(backend, q, k, v, **kw):
    """Wrong gradients on the GPU with UUID GPU-bad only: one faulty GPU among good ones.
    Notes which process ran what, and with which cache settings, in $FAKE_LOG."""
    with open(os.environ["FAKE_LOG"], "a") as handle:
        handle.write(f"{os.getpid()} {_head_dim(q)} {os.environ.get('FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED')} "
                     f"{os.environ.get('FLASH_ATTENTION_CUTE_DSL_CACHE_DIR')} {os.environ.get('CUDA_VISIBLE_DEVICES')}\n")
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "GPU-bad":
        return wrong_dq(backend, q, k, v, **kw)
    return correct(backend, q, k, v, **kw)


def note_process(backend, q, k, v, **kw):
    """Correct; notes which process ran which backend, and what that child preloaded, in $FAKE_LOG."""
    import sys

    preload = sys.argv[sys.argv.index("--preload") + 1]
    with open(os.environ["FAKE_LOG"], "a") as handle:
        handle.write(f"{os.getpid()} {backend} {preload}\n")
    return correct(backend, q, k, v, **kw)
