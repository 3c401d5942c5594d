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

import importlib
import inspect
from typing import Any

import torch

from fa4doctor.integrations.transformers_calls import AttentionRefused, attend
from fa4doctor.integrations.transformers_ops import compiled, outside_graph
from fa4doctor.runtime import dispatcher

__all__ = ["NAME", "AttentionRefused", "attention_forward", "padding_mask", "register"]

NAME = "fa4doctor"
# Keywords some transformers models pass that change what attention computes and that the dispatcher
# has no argument for (counted over transformers 5.23.0 models/*/modeling_*.py attention calls).
REFUSED_KWARGS = {"position_bias": "a position bias (T5-style)", "cu_seq_lens_q": "packed sequences (cu_seq_lens_q)",
                  "cu_seq_lens_k": "packed sequences (cu_seq_lens_k)", "indices": "sparse indices",
                  "block_indices": "block-sparse indices", "cache": "a paged cache"}


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


# Eager mode calls the dispatcher directly (nothing in between, nothing extra for training). Under
# torch.compile each layer's call is one opaque op in the graph (`transformers_ops.compiled`), so the graph does
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
        return attend(dispatcher.attention, query, key, value, attention_mask, sink, *options, dropout, layer,
                      name), None
    if dropout:
        return outside_graph(query, key, value, attention_mask, sink, *options, dropout, layer, name), None
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                 for t in (query, key, value, sink))
    return compiled(query, key, value, attention_mask, sink, *options, needs_grad, layer, name), None


