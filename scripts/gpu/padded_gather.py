"""How to pack a padded batch's valid tokens to `thd` and scatter the output back, forward and
backward, on the GPU, three ways: advanced indexing with (batch, position) index tensors, whose
backward accumulates after sorting the indices (the transformers integration's way until
2026-12-07); a flat index (`index_select`, whose backward is an `index_add_`, after a copy that
makes (batch, position) one dimension; the integration's way since, `runtime/inputs.take_rows`);
and advanced indexing whose backward writes without accumulating, since each position is taken
once. CUDA events, warm-up, the median of 50 rounds; one line a shape.

    python scripts/gpu/padded_gather.py
"""

from __future__ import annotations

import statistics

import torch


class _UniqueGather(torch.autograd.Function):
    """`t[where]` whose gradient is written, not accumulated: each position is gathered once."""

    @staticmethod
    def forward(ctx, t, b, s):
        ctx.save_for_backward(b, s)
        ctx.shape = t.shape
        return t[b, s]

    @staticmethod
    def backward(ctx, grad):
        b, s = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).index_put_((b, s), grad), None, None


def _time(fn, rounds: int = 50) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _case(batch: int, seqlen: int, heads: int, dim: int) -> str:
    query = torch.randn(batch, heads, seqlen, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    keep = torch.ones(batch, seqlen, dtype=torch.bool, device="cuda")
    keep[0, : seqlen // 4] = False
    keep[1, -seqlen // 8:] = False
    where = keep.nonzero(as_tuple=True)
    flat = (where[0] * seqlen + where[1]).contiguous()

    def indexed():
        q = query.transpose(1, 2)
        packed = q[where] * 1.0  # the kernel's stand-in: one elementwise op
        full = packed.new_zeros(batch, seqlen, heads, dim).index_put(where, packed)
        full.sum().backward()

    def flat_index():
        q = query.transpose(1, 2).reshape(batch * seqlen, heads, dim)
        packed = q.index_select(0, flat) * 1.0
        full = packed.new_zeros(batch * seqlen, heads, dim).index_copy(0, flat, packed)
        full.view(batch, seqlen, heads, dim).sum().backward()

    def unique():
        q = query.transpose(1, 2)
        packed = _UniqueGather.apply(q, *where) * 1.0
        full = packed.new_zeros(batch, seqlen, heads, dim).index_put(where, packed)
        full.sum().backward()

    a, b, c = _time(indexed), _time(flat_index), _time(unique)
    return (f"b{batch} s{seqlen} h{heads} d{dim}: advanced indexing {a:.3f} ms, flat index {b:.3f} ms "
            f"(flat / advanced {b / a:.2f}), unique-index backward {c:.3f} ms (unique / advanced {c / a:.2f})")


def main() -> None:
    print(torch.__version__, torch.cuda.get_device_name())
    for shape in ((4, 1024, 4, 64), (4, 1024, 32, 128), (8, 4096, 32, 128)):
        print(_case(*shape))


if __name__ == "__main__":
    main()
