"""transformers' attention registry out: `attn_implementation="fa4doctor"` runs every attention layer
through the vetted dispatcher (`fa4doctor.dispatch.attention`), with the same rules, counters and
`explain` as any other call.

    import fa4doctor.integrations.transformers as fa4doctor_hf
    fa4doctor_hf.register()  # then: AutoModelForCausalLM.from_pretrained(..., attn_implementation="fa4doctor")

An attention function receives `(module, query, key, value, attention_mask, dropout, scaling,
sliding_window, softcap, is_causal, s_aux, **kwargs)` with query/key/value as (batch, heads, seq,
head_dim) and returns `(attn_output, attn_weights)` with attn_output as (batch, seq, heads,
head_dim_v) (transformers 5.23.0 integrations/flash_attention.py:27-41, sdpa_attention.py:95-107,
206-208). Each is translated, never approximated:

- causal: `module.is_causal` (or the `is_causal` keyword). transformers' queries are always the last
  keys (a cache holds the earlier ones), so the mask is bottom-right aligned; with seqlen_q ==
  seqlen_kv that is TE's plain `causal`.
- `sliding_window=W`: a query sees W keys, itself included (masking_utils.py:94-95), so the window
  is (W - 1, 0).
- `softcap`, `scaling`, `dropout` (transformers passes 0 outside training), `s_aux`/`sinks` (a
  learnable sink per query head, as FA4's `learnable_sink`), `deterministic`.
- padding: the mask function registered beside the attention function hands over the 2D padding
  mask, as FlashAttention's does (masking_utils.py:636-676); each row's valid tokens must be one
  contiguous run (left or right padding). They are packed to `thd` with `cu_seqlens`, run under
  `padding_causal_bottom_right`, and scattered back; padded positions get zeros.

Anything else that would change what the layer computes (a custom mask function, packed
sequences, a position bias, a 4D mask, a paged cache, `output_attentions=True`) and any call the
dispatcher refuses raises `AttentionRefused` naming the layer, never a quiet change of semantics.

Under torch.compile each call is one custom op (`fa4doctor::transformers_attention`) whose body is the
eager path, so the graph does not break per layer and the dispatcher still decides and counts each call.

>>> str(AttentionRefused("a position bias (T5-style)", layer=3, module="T5Attention"))[:64]
'fa4doctor: layer 3 (T5Attention): a position bias (T5-style); no'
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from fa4doctor.dispatch.spec import SpecError
from fa4doctor.names import DispatchError
from fa4doctor.runtime import dispatcher
from fa4doctor.runtime.tensor_memo import TensorMemo

NAME = "fa4doctor"
# Keywords some transformers models pass that change what attention computes and that the dispatcher
# has no argument for (counted over transformers 5.23.0 models/*/modeling_*.py attention calls).
REFUSED_KWARGS = {"position_bias": "a position bias (T5-style)", "cu_seq_lens_q": "packed sequences (cu_seq_lens_q)",
                  "cu_seq_lens_k": "packed sequences (cu_seq_lens_k)", "indices": "sparse indices",
                  "block_indices": "block-sparse indices", "cache": "a paged cache"}


class AttentionRefused(ValueError):
    """A transformers attention call fa4doctor cannot run exactly; names the layer."""

    def __init__(self, what: str, layer: int | None = None, module: str | None = None):
        self.layer = layer
        where = f"layer {layer if layer is not None else '?'} ({module})" if module else "mask"
        super().__init__(f"fa4doctor: {where}: {what}; no backend runs this exactly, so it is refused "
                         "rather than changed (attn_implementation=\"eager\" runs it)")


# An import inside a function torch.compile traces breaks the graph ("Bad import result": the H100,
# torch 2.11, docs/validation/h100-b40/transformers/), so `register` keeps the module for the traced path.
_masking_utils = None


def register(name: str = NAME) -> str:
    """Register the attention function and its mask function with transformers under `name`."""
    global _masking_utils
    from transformers import AttentionInterface, masking_utils

    _masking_utils = masking_utils
    AttentionInterface.register(name, attention_forward)
    masking_utils.AttentionMaskInterface.register(name, padding_mask)
    return name


def _check_pattern(mask_function, use_vmap: bool) -> None:
    """Plain causal, causal with a sliding window, or bidirectional: the patterns a padding mask plus
    `attn_mask_type`/`window_size` say exactly (masking_utils.py:72-97, 130-134). Packed-sequence,
    chunked, blockwise and model-specific overlays wrap these and are refused."""
    mu = _masking_utils or importlib.import_module("transformers.masking_utils")
    if not use_vmap and (mask_function is None
                         or mask_function in (mu.causal_mask_function, mu.bidirectional_mask_function)):
        return
    _check_composed(mask_function, use_vmap)


# It reads a closure, which dynamo cannot (torch 2.13: `__closure__` of a function made in the graph is
# unsupported), so under torch.compile a composed pattern (a sliding window's) costs one graph break
# per forward and mask kind; plain causal costs none. Never one per layer.
@torch.compiler.disable
def _check_composed(mask_function, use_vmap: bool) -> None:
    from transformers import masking_utils as mu

    if not use_vmap and getattr(mask_function, "__qualname__", "") == "and_masks.<locals>.and_mask":
        parts = inspect.getclosurevars(mask_function).nonlocals.get("mask_functions", ())
        if all(part is mu.causal_mask_function
               or getattr(part, "__qualname__", "") == "sliding_window_overlay.<locals>.inner_mask" for part in parts):
            return
    name = getattr(mask_function, "__qualname__", repr(mask_function))
    raise AttentionRefused(f"the model's mask pattern ({name}: a custom, packed-sequence or chunked mask)")


def padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                 mask_function=None, attention_mask: torch.Tensor | None = None, use_vmap: bool = False,
                 **kwargs: Any) -> torch.Tensor | None:
    """The mask function beside `attention_forward`: the 2D padding mask (batch, kv_length), or None
    without padding, as `flash_attention_mask` (masking_utils.py:667-676); a pattern it cannot say
    exactly is refused here, before any layer runs.

    >>> padding_mask(2, 3, 3, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]).bool()).tolist()
    [[False, True, True], [True, True, True]]
    """
    _check_pattern(mask_function, use_vmap)
    if attention_mask is None:
        return None
    if attention_mask.shape[-1] < kv_length:  # a static cache longer than the mask (masking_utils.py:670-672)
        raise AttentionRefused(f"a padding mask of {attention_mask.shape[-1]} keys for {kv_length} keys (static cache)")
    attention_mask = attention_mask[:, -kv_length:]
    if torch.compiler.is_compiling():  # no branch on its values in a graph: the op reads a full mask as none
        return attention_mask
    return None if bool(attention_mask.all()) else attention_mask


def _refuse_kwargs(kwargs: dict[str, Any]) -> str | None:
    for key, what in REFUSED_KWARGS.items():
        if kwargs.get(key) is not None:
            return what
    if kwargs.get("output_attentions"):
        return "output_attentions=True (no fused backend returns attention weights)"
    return None


def _contiguous(keep: torch.Tensor) -> bool:
    """Every row's valid positions form one run (left or right padding, never holes)."""
    index = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    first = torch.where(keep, index, keep.shape[1]).amin(1)
    last = torch.where(keep, index, -1).amax(1)
    count = keep.sum(1)
    return bool(((count == 0) | (last - first + 1 == count)).all())


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


@dataclass(frozen=True)
class _Packing:
    """Where one padding mask's valid tokens are, as `_padded` packs them: index tensors for the
    gather and scatter (no host sync to use them) and the `thd` offsets and maxima."""

    where_q: tuple[torch.Tensor, torch.Tensor]  # (batch, position) of each valid query
    where_k: tuple[torch.Tensor, torch.Tensor]
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int


# transformers hands every layer of a forward the same mask tensor, and reading a mask waits for the
# device several times (its runs, the index tensors, the maxima): one packing per mask.
_PACKINGS = TensorMemo(limit=8)  # a forward's full and sliding masks, with room


def _packing(mask: torch.Tensor, seqlen_q: int) -> _Packing:
    kept = _PACKINGS.get(mask, seqlen_q)
    if kept is not None:
        return kept
    keep_k = mask.to(torch.bool)
    keep_q = keep_k[:, -seqlen_q:]
    if not _contiguous(keep_k):
        raise SpecError("attention_mask", "a padding mask with holes (valid tokens must be one run per row)")
    lens_q, lens_k = keep_q.sum(1), keep_k.sum(1)
    packing = _Packing(keep_q.nonzero(as_tuple=True), keep_k.nonzero(as_tuple=True), _offsets(lens_q),
                       _offsets(lens_k), int(lens_q.max()), int(lens_k.max()))
    return _PACKINGS.put(mask, packing, seqlen_q)


def _padded(attend, q, k, v, mask: torch.Tensor, causal: bool, call: dict[str, Any]) -> torch.Tensor:
    """Valid tokens packed to `thd`, run, and put back; queries are the last seqlen_q keys."""
    if mask.dim() != 2 or mask.shape[1] != k.shape[1]:
        raise SpecError("attention_mask", f"a mask of shape {tuple(mask.shape)} for {k.shape[1]} keys; "
                        "fa4doctor reads 2D padding masks (batch, keys) only")
    pack = _packing(mask, q.shape[1])
    out = attend(
        q[pack.where_q], k[pack.where_k], v[pack.where_k], qkv_format="thd",
        attn_mask_type="padding_causal_bottom_right" if causal else "padding",
        cu_seqlens_q=pack.cu_q, cu_seqlens_kv=pack.cu_k, max_seqlen_q=pack.max_q, max_seqlen_kv=pack.max_k, **call)
    full = out.new_zeros(q.shape[0], q.shape[1], *out.shape[1:])
    return full.index_put(pack.where_q, out)


def _attend(attend, query, key, value, mask: torch.Tensor | None, sink: torch.Tensor | None, causal: bool,
            sliding_window: int | None, scaling: float | None, softcap: float, deterministic: bool, dropout: float,
            layer: int | None, module: str) -> torch.Tensor:
    """One layer's call through `attend` (the dispatcher's `attention` or `recompute`), bhsd in, bshd out."""
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    window = None if sliding_window is None else (int(sliding_window) - 1, 0)
    call = {"window_size": window, "softmax_scale": scaling, "dropout_p": dropout, "softcap": softcap,
            "learnable_sink": sink, "deterministic": deterministic}
    try:
        if mask is not None:
            return _padded(attend, q, k, v, mask, causal, call)
        mask_type = ("causal" if q.shape[1] == k.shape[1] else "causal_bottom_right") if causal else "no_mask"
        return attend(q, k, v, attn_mask_type=mask_type, **call)
    except (SpecError, DispatchError) as exc:
        raise AttentionRefused(str(exc), layer, module) from exc


# Eager mode calls the dispatcher directly (nothing in between, nothing extra for training). Under
# torch.compile each layer's call is one opaque op in the graph, `_compiled` below, so the graph does
# not break per layer (before, a `torch.compiler.disable` here broke it at every layer; tracing into the
# dispatcher broke it 19 times for 2 layers: torch._dynamo.explain, the padded tiny Llama of
# tests/integrations/test_transformers.py, torch 2.13). The op's body is the eager path on real tensors,
# so the dispatcher decides, counts and refuses every call exactly as in eager mode.
def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      sliding_window: int | None = None, softcap: float | None = None,
                      is_causal: bool | None = None, s_aux: torch.Tensor | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention function for `attn_implementation="fa4doctor"`: bhsd in, bshd out.

    >>> class Layer(torch.nn.Module):
    ...     layer_idx, is_causal = 0, True
    >>> q = k = v = torch.randn(1, 2, 4, 8)  # (batch, heads, seq, head_dim)
    >>> out, weights = attention_forward(Layer(), q, k, v, None, sliding_window=2)
    >>> out.shape, weights
    (torch.Size([1, 4, 2, 8]), None)
    """
    layer, name = getattr(module, "layer_idx", None), type(module).__name__
    refused = _refuse_kwargs(kwargs)
    if refused:
        raise AttentionRefused(refused, layer, name)
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    if sliding_window is not None and not causal:  # |q - k| <= W (masking_utils.py:137-147): not read here
        raise AttentionRefused("sliding_window: a bidirectional sliding window is not translated", layer, name)
    sink = s_aux if s_aux is not None else kwargs.get("sinks")
    options = (causal, sliding_window, scaling, float(softcap or 0.0), bool(kwargs.get("deterministic") or False))
    dropout = float(dropout or 0.0)
    if not torch.compiler.is_compiling():
        return _attend(dispatcher.attention, query, key, value, attention_mask, sink, *options, dropout, layer,
                       name), None
    if dropout:
        return _outside_graph(query, key, value, attention_mask, sink, *options, dropout, layer, name), None
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                 for t in (query, key, value, sink))
    return _compiled(query, key, value, attention_mask, sink, *options, needs_grad, layer, name), None


def _full_to_none(mask: torch.Tensor | None, keys: int) -> torch.Tensor | None:
    """`padding_mask` gives a graph its mask even without padding (a graph cannot return None by
    value); a full one is read here as eager's `padding_mask` reads it."""
    if mask is None or mask.dim() != 2 or mask.shape[1] != keys or not bool(mask.all()):
        return mask
    return None


# With dropout the call stays outside the graph (one break per layer): the op's backward recomputes
# its forward, which would draw another dropout mask than the forward did.
@torch.compiler.disable
def _outside_graph(query, key, value, mask, *rest) -> torch.Tensor:
    return _attend(dispatcher.attention, query, key, value, _full_to_none(mask, key.shape[2]), *rest)


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
def _compiled(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
              sink: torch.Tensor | None, causal: bool, sliding_window: int | None, scaling: float | None,
              softcap: float, deterministic: bool, needs_grad: bool, layer: int | None, module: str) -> torch.Tensor:
    # Leaves that require grad under grad mode: the dispatcher's spec says training, as eager's call
    # would (its backward rules apply); below autograd, nothing is recorded here.
    q, k, v, s = _leaves(needs_grad, query, key, value, sink)
    with torch.set_grad_enabled(needs_grad):
        out = _attend(dispatcher.attention, q, k, v, _full_to_none(mask, key.shape[2]), s, causal, sliding_window,
                      scaling, softcap, deterministic, 0.0, layer, module)
    return out.detach().contiguous()


@_compiled.register_fake
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
        out = _attend(dispatcher.recompute, *leaves[:3], _full_to_none(mask, key.shape[2]), leaves[3], causal,
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


_compiled.register_autograd(_backward, setup_context=_save)
