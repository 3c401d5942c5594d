"""Fake kernels for the bench tests: each stands in for a backend inside the bench child, taking a
known time (a sleep), so that the child's real timing loop ranks them; a few misbehave."""

from __future__ import annotations

import os
import signal
import time

import torch

# Milliseconds a call takes, by (backend, SDPA kernel): cuDNN is fastest, then FA4.
PACE_MS = {("fa4", None): 3.0, ("sdpa", None): 2.0, ("sdpa", "cudnn"): 1.0, ("sdpa", "flash"): 4.0,
           ("sdpa", "efficient"): 6.0}


class _Free(torch.autograd.Function):
    """An output (and gradients) of the right shapes that cost nothing to compute: the sleep is the
    kernel's whole time, on a CPU where touching the tensors would take longer than the sleep."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.inputs = (q.shape, k.shape, v.shape, q.dtype)
        return q.new_empty(*q.shape[:-1], v.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        *shapes, dtype = ctx.inputs
        return tuple(torch.empty(shape, dtype=dtype) for shape in shapes)


def _out(q, k, v):
    return _Free.apply(q, k, v)


def paced(backend, q, k, v, sdpa_kernel=None, **kw):
    time.sleep(PACE_MS[(backend, sdpa_kernel)] / 1000)
    return _out(q, k, v), None


def efficient_declines(backend, q, k, v, sdpa_kernel=None, **kw):
    """SDPA's efficient kernel refuses the shape, as torch does for GQA: a fact, not a failure."""
    if sdpa_kernel == "efficient":
        raise RuntimeError("No available kernel. Aborting execution.")
    return paced(backend, q, k, v, sdpa_kernel, **kw)


_calls = {"fa4": 0}


def fa4_crashes_timed(backend, q, k, v, sdpa_kernel=None, **kw):
    """FA4 passes its one warm-up call, then kills its process inside the timed rounds."""
    if backend == "fa4":
        _calls["fa4"] += 1
        if _calls["fa4"] > 1:
            os.kill(os.getpid(), signal.SIGSEGV)
    return paced(backend, q, k, v, sdpa_kernel, **kw)
