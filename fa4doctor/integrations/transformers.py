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

>>> str(AttentionRefused("a position bias (T5-style)", layer=3, module="T5Attention"))[:64]
'fa4doctor: layer 3 (T5Attention): a position bias (T5-style); no'
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from fa4doctor.dispatch.spec import SpecError
from fa4doctor.names import DispatchError
from fa4doctor.runtime import dispatcher

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


def register(name: str = NAME) -> str:
    """Register the attention function and its mask function with transformers under `name`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, padding_mask)
    return name


def _expressible(mask_function) -> bool:
    """Plain causal, causal with a sliding window, or bidirectional: the patterns a padding mask plus
    `attn_mask_type`/`window_size` say exactly (masking_utils.py:72-97, 130-134). Packed-sequence,
    chunked, blockwise and model-specific overlays wrap these and are not."""
    from transformers import masking_utils as mu

    if mask_function in (mu.causal_mask_function, mu.bidirectional_mask_function):
        return True
    if getattr(mask_function, "__qualname__", "") != "and_masks.<locals>.and_mask":
        return False
    parts = inspect.getclosurevars(mask_function).nonlocals.get("mask_functions", ())
    return all(part is mu.causal_mask_function
               or getattr(part, "__qualname__", "") == "sliding_window_overlay.<locals>.inner_mask" for part in parts)


@torch.compiler.disable  # it reads a closure and the mask's values: host work, once per mask kind and forward
def padding_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                 mask_function=None, attention_mask: torch.Tensor | None = None, use_vmap: bool = False,
                 **kwargs: Any) -> torch.Tensor | None:
    """The mask function beside `attention_forward`: the 2D padding mask (batch, kv_length), or None
    without padding, as `flash_attention_mask` (masking_utils.py:667-676); a pattern it cannot say
    exactly is refused here, before any layer runs.

    >>> padding_mask(2, 3, 3, attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]).bool()).tolist()
    [[False, True, True], [True, True, True]]
    """
    if use_vmap or (mask_function is not None and not _expressible(mask_function)):
        name = getattr(mask_function, "__qualname__", repr(mask_function))
        raise AttentionRefused(f"the model's mask pattern ({name}: a custom, packed-sequence or chunked mask)")
    if attention_mask is None:
        return None
    if attention_mask.shape[-1] < kv_length:  # a static cache longer than the mask (masking_utils.py:670-672)
        raise AttentionRefused(f"a padding mask of {attention_mask.shape[-1]} keys for {kv_length} keys (static cache)")
    attention_mask = attention_mask[:, -kv_length:]
    return None if bool(attention_mask.all()) else attention_mask


def _refuse_kwargs(kwargs: dict[str, Any]) -> str | None:
    for key, what in REFUSED_KWARGS.items():
        if kwargs.get(key) is not None:
            return what
    if kwargs.get("output_attentions"):
        return "output_attentions=True (no fused backend returns attention weights)"
    return None


def _window(sliding_window: int | None, causal: bool) -> tuple[int, int] | None:
    if sliding_window is None:
        return None
    if not causal:  # bidirectional windows are |q - k| <= W (masking_utils.py:137-147): not read here
        raise SpecError("sliding_window", "a bidirectional sliding window is not translated")
    return (int(sliding_window) - 1, 0)


def _contiguous(keep: torch.Tensor) -> bool:
    """Every row's valid positions form one run (left or right padding, never holes)."""
    index = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    first = torch.where(keep, index, keep.shape[1]).amin(1)
    last = torch.where(keep, index, -1).amax(1)
    count = keep.sum(1)
    return bool(((count == 0) | (last - first + 1 == count)).all())


def _offsets(lengths: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


def _padded(q, k, v, mask: torch.Tensor, causal: bool, call: dict[str, Any]) -> torch.Tensor:
    """Valid tokens packed to `thd`, run, and put back; queries are the last seqlen_q keys."""
    if mask.dim() != 2 or mask.shape[1] != k.shape[1]:
        raise SpecError("attention_mask", f"a mask of shape {tuple(mask.shape)} for {k.shape[1]} keys; "
                        "fa4doctor reads 2D padding masks (batch, keys) only")
    keep_k = mask.to(torch.bool)
    keep_q = keep_k[:, -q.shape[1]:]
    if not _contiguous(keep_k):
        raise SpecError("attention_mask", "a padding mask with holes (valid tokens must be one run per row)")
    lens_q, lens_k = keep_q.sum(1), keep_k.sum(1)
    out = dispatcher.attention(
        q[keep_q], k[keep_k], v[keep_k], qkv_format="thd",
        attn_mask_type="padding_causal_bottom_right" if causal else "padding",
        cu_seqlens_q=_offsets(lens_q), cu_seqlens_kv=_offsets(lens_k), max_seqlen_q=int(lens_q.max()),
        max_seqlen_kv=int(lens_k.max()), **call)
    full = out.new_zeros(q.shape[0], q.shape[1], *out.shape[1:])
    return full.index_put((keep_q,), out)


def _run(q, k, v, mask: torch.Tensor | None, causal: bool, call: dict[str, Any]) -> torch.Tensor:
    if mask is None:
        same = q.shape[1] == k.shape[1]
        mask_type = ("causal" if same else "causal_bottom_right") if causal else "no_mask"
        return dispatcher.attention(q, k, v, attn_mask_type=mask_type, **call)
    return _padded(q, k, v, mask, causal, call)


# Outside torch.compile's graph: the dispatcher decides in Python on the first call of each shape
# and counts every call, which dynamo traced into and broke inside at every `.item()` and lock
# (torch._dynamo.explain, the padded tiny Llama of tests/integrations/test_transformers.py, torch
# 2.13: 19 breaks for 2 layers); disabled, each layer costs one break, and compiled output matches.
@torch.compiler.disable
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
    sink = s_aux if s_aux is not None else kwargs.get("sinks")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    try:
        call = {"window_size": _window(sliding_window, causal), "softmax_scale": scaling,
                "dropout_p": float(dropout or 0.0), "softcap": float(softcap or 0.0), "learnable_sink": sink,
                "deterministic": bool(kwargs.get("deterministic") or False)}
        return _run(q, k, v, attention_mask, causal, call), None
    except (SpecError, DispatchError) as exc:
        raise AttentionRefused(str(exc), layer, name) from exc
