"""The compiled path of `attn_implementation="fa4doctor"`: each layer's call is one custom op,
`fa4doctor::transformers_attention`, whose body is the eager path on real tensors, so under
torch.compile the graph does not break per layer and the dispatcher still decides, counts and refuses
every call (docs/transformers.md). Its gradient is a second op that recomputes the forward.

Importing this module registers the two ops with torch; `fa4doctor.integrations.transformers`
imports it when it is itself imported, never from a traced function (an import there breaks the graph).
"""

from __future__ import annotations

import contextlib

import torch

from fa4doctor.integrations.transformers_calls import attend
from fa4doctor.runtime import dispatcher


def _full_to_none(mask: torch.Tensor | None, keys: int) -> torch.Tensor | None:
    """`padding_mask` gives a graph its mask even without padding (a graph cannot return None by
    value); a full one is read here as eager's `padding_mask` reads it."""
    if mask is None or mask.dim() != 2 or mask.shape[1] != keys or not bool(mask.all()):
        return mask
    return None


# With dropout the call stays outside the graph (one break per layer): the op's backward recomputes
# its forward, which would draw another dropout mask than the forward did.
@torch.compiler.disable
def outside_graph(query, key, value, mask, *rest) -> torch.Tensor:
    return attend(dispatcher.attention, query, key, value, _full_to_none(mask, key.shape[2]), *rest)


def _leaves(needs_grad: bool, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [t.detach().requires_grad_() if needs_grad and t is not None else t for t in tensors]


_AUTOGRAD_KEYS = (torch._C.DispatchKey.AutogradFunctionality, torch._C.DispatchKey.AutogradOther,
                  torch._C.DispatchKey.AutogradNestedTensor)


@contextlib.contextmanager
def _recording():
    """Autograd back on inside an op's kernel, which runs below autograd (torch/_library/autograd.py:38-48,
    torch 2.13: `_AutoDispatchBelowAutograd` excludes these keys), so the recompute can be differentiated."""
    excluded = [torch._C._dispatch_tls_is_dispatch_key_excluded(key) for key in _AUTOGRAD_KEYS]
    for key in _AUTOGRAD_KEYS:
        torch._C._dispatch_tls_set_dispatch_key_excluded(key, False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for key, was in zip(_AUTOGRAD_KEYS, excluded):
            torch._C._dispatch_tls_set_dispatch_key_excluded(key, was)


@torch.library.custom_op("fa4doctor::transformers_attention", mutates_args=())
def compiled(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
             sink: torch.Tensor | None, causal: bool, sliding_window: int | None, scaling: float | None,
             softcap: float, deterministic: bool, needs_grad: bool, layer: int | None, module: str) -> torch.Tensor:
    # Leaves that require grad under grad mode: the dispatcher's spec says training, as eager's call
    # would (its backward rules apply); below autograd, nothing is recorded here.
    q, k, v, s = _leaves(needs_grad, query, key, value, sink)
    with torch.set_grad_enabled(needs_grad):
        out = attend(dispatcher.attention, q, k, v, _full_to_none(mask, key.shape[2]), s, causal, sliding_window,
                     scaling, softcap, deterministic, 0.0, layer, module)
    return out.detach().contiguous()


@compiled.register_fake
def _compiled_shape(query, key, value, mask, sink, *options) -> torch.Tensor:
    batch, heads, seqlen, _ = query.shape
    # FP8 in, bf16 out, as the dispatcher returns it (FA4 iface@b36:925; runtime/adapters/sdpa.py `dense`).
    dtype = torch.bfloat16 if query.dtype.itemsize == 1 else query.dtype
    return query.new_empty(batch, seqlen, heads, value.shape[-1], dtype=dtype)


# The gradient recomputes the forward under autograd through the same plan, uncounted
# (`dispatcher.recompute`), and differentiates it: a compiled backward pays one more attention forward
# per layer, and no autograd graph is kept from the forward to the backward. It is an op of its own,
# so AOTAutograd traces its fake, never the dispatcher.
@torch.library.custom_op("fa4doctor::transformers_attention_backward", mutates_args=())
def _compiled_backward(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       mask: torch.Tensor | None, sink: torch.Tensor | None, causal: bool, sliding_window: int | None,
                       scaling: float | None, softcap: float, deterministic: bool, layer: int | None,
                       module: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    leaves = _leaves(True, query, key, value, sink)
    wrt = [t for t in leaves if t is not None]
    with _recording():
        out = attend(dispatcher.recompute, *leaves[:3], _full_to_none(mask, key.shape[2]), leaves[3], causal,
                     sliding_window, scaling, softcap, deterministic, 0.0, layer, module)
        grads = torch.autograd.grad(out, wrt, grad, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g.contiguous() for g, t in zip(grads, wrt)]
    return grads[0], grads[1], grads[2], grads[3] if sink is not None else query.new_zeros(0)


@_compiled_backward.register_fake
def _compiled_backward_shapes(grad, query, key, value, mask, sink, *options):
    dsink = query.new_empty(0) if sink is None else sink.new_empty(sink.shape)
    return query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape), dsink


def _save(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:5])  # query, key, value, mask, sink
    ctx.options = inputs[5:10] + inputs[11:]  # all but needs_grad: a backward means it was True


def _backward(ctx, grad):
    query, key, value, mask, sink = ctx.saved_tensors
    dq, dk, dv, dsink = _compiled_backward(grad, query, key, value, mask, sink, *ctx.options)
    return (dq, dk, dv, None, dsink if sink is not None else None) + (None,) * 8


compiled.register_autograd(_backward, setup_context=_save)
