"""Every distinct attention call a model makes: per layer kind, for training, prefill and decode.

A call is what transformers hands its attention function (`fa4doctor.integrations.transformers`
runs exactly these): training and prefill see seqlen_q == seqlen_kv under a causal mask; decode
sees one query against the cache, whose last key is the query's own, so its causal mask is
bottom-right aligned. A sliding layer's cache keeps its last `window - 1` keys
(cache_utils.py:244-247, transformers 5.23.0), so its decode call sees at most `window` keys.

>>> from fa4doctor.models.config import read_model
>>> model = read_model({"model_type": "mistral", "num_hidden_layers": 32, "num_attention_heads": 32,
...     "num_key_value_heads": 8, "hidden_size": 4096, "sliding_window": 4096}, use_transformers=False)
>>> [(c.name, c.spec.seqlen_kv, c.spec.window_size) for c in model_calls(model, seqlen=8192)][::2]
[('mistral_sliding_train', 8192, (4095, 0)), ('mistral_sliding_decode', 4096, (4095, 0))]
"""

from __future__ import annotations

from dataclasses import dataclass

from fa4doctor.dispatch.spec import AttentionSpec, Dtype, MaskType
from fa4doctor.models.config import LayerAttention, ModelAttention

PHASES = ("train", "prefill", "decode")
DEFAULT_SEQLEN = 8192  # capped at the model's max_position_embeddings


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One distinct attention call: its spec, the softmax scale (not a spec field) and its layers."""

    name: str  # `<model_type>_<kind>_<phase>`: a Prometheus label value, as every spec name is
    phase: str
    kind: str
    layers: tuple[int, ...]
    scale: float
    spec: AttentionSpec


def layers_text(layers: tuple[int, ...]) -> str:
    """Layer numbers in few characters: a run, a run with a step, or a list.

    >>> layers_text((0, 1, 2, 3)), layers_text((0, 2, 4, 6, 8)), layers_text((1, 4, 5))
    ('0-3 (4)', '0-8/2 (5)', '1,4,5')
    """
    if len(layers) < 3:
        return ",".join(map(str, layers))
    step = layers[1] - layers[0]
    if step > 0 and all(b - a == step for a, b in zip(layers, layers[1:])):
        return f"{layers[0]}-{layers[-1]}{f'/{step}' if step > 1 else ''} ({len(layers)})"
    return ",".join(map(str, layers))


def _spec(layer: LayerAttention, phase: str, seqlen: int, dtype: Dtype, device: str) -> AttentionSpec:
    decode = phase == "decode"
    window = (layer.window - 1, 0) if layer.window else (-1, -1)
    seqlen_kv = min(seqlen, layer.window) if decode and layer.window else seqlen
    return AttentionSpec(
        dtype=dtype, head_dim_qk=layer.head_dim_qk, head_dim_v=layer.head_dim_v, num_heads_q=layer.num_heads_q,
        num_heads_kv=layer.num_heads_kv, seqlen_q=1 if decode else seqlen, seqlen_kv=seqlen_kv,
        attn_mask_type=MaskType.CAUSAL_BOTTOM_RIGHT if decode else MaskType.CAUSAL, window_size=window,
        dropout_p=layer.dropout if phase == "train" else 0.0, softcap=layer.softcap, learnable_sink=layer.sink,
        training=phase == "train", device=device)


def default_seqlen(model: ModelAttention) -> int:
    return min(DEFAULT_SEQLEN, model.max_positions or DEFAULT_SEQLEN)


def model_calls(model: ModelAttention, seqlen: int | None = None, dtype: Dtype | str | None = None,
                device: str = "cuda") -> tuple[ModelCall, ...]:
    """One `ModelCall` per distinct (phase, layer attention), in phase then layer order."""
    seqlen = default_seqlen(model) if seqlen is None else seqlen
    dtype = Dtype(dtype) if dtype is not None else model.dtype
    calls: list[ModelCall] = []
    for phase in PHASES:
        groups: dict[LayerAttention, list[int]] = {}
        for number, layer in enumerate(model.layers):
            groups.setdefault(layer, []).append(number)
        for layer, numbers in groups.items():
            name = f"{model.model_type}_{layer.kind}_{phase}"
            if any(c.name == name for c in calls):  # two kinds of full layer: keep names unique
                name = f"{model.model_type}_{layer.kind}{numbers[0]}_{phase}"
            calls.append(ModelCall(name, phase, layer.kind, tuple(numbers), layer.scale,
                                   _spec(layer, phase, seqlen, dtype, device)))
    return tuple(calls)


def model_specs(model: ModelAttention, **options) -> list[tuple[str, AttentionSpec]]:
    """`model_calls` as the named specs `check`, `explain` and `smoke` judge."""
    return [(call.name, call.spec) for call in model_calls(model, **options)]
