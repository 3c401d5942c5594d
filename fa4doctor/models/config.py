"""A transformers `config.json` read into what each layer's attention is, with no torch and no guess.

Each understood `model_type` has a reader that says, per layer, the query and key/value heads, the
head dims, the softmax scale, the sliding window, the logit softcap and whether a learnable sink
joins the softmax, exactly as that model's transformers attention module computes them (each rule
cites its transformers 5.23.0 line). A config of any other type is refused, naming the fields it
lacks: fa4doctor never guesses what an unknown model does with windows, softcap, sinks or head dims.

Where transformers is installed, the config goes through `AutoConfig.for_model` first, so the
defaults and derived fields (`layer_types`, `head_dim`) are transformers' own; without it the JSON
is read as it is, and the fields whose defaults differ between model classes must be present.

>>> model = read_model({"model_type": "gemma2", "num_hidden_layers": 4, "num_attention_heads": 8,
...     "num_key_value_heads": 4, "hidden_size": 2304, "head_dim": 256, "sliding_window": 4096,
...     "attn_logit_softcapping": 50.0, "query_pre_attn_scalar": 256}, use_transformers=False)
>>> [(layer.kind, layer.window, layer.softcap, layer.scale) for layer in model.layers[:2]]
[('sliding', 4096, 50.0, 0.0625), ('full', None, 50.0, 0.0625)]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fa4doctor.dispatch.spec import Dtype, SpecError

# The fields every understood model type has; an unknown type is told which of them it lacks.
CORE = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size")
LAYER_KINDS = {"full_attention": "full", "sliding_attention": "sliding"}
_DTYPES = {"bfloat16": Dtype.BF16, "float16": Dtype.FP16, "float32": Dtype.FP32, "float64": Dtype.FP64}


@dataclass(frozen=True, slots=True)
class LayerAttention:
    """One layer's attention, whatever the phase. `window` is transformers' `sliding_window`: a
    query sees that many keys, itself included (masking_utils.py:94-95, `kv_idx > q_idx - window`)."""

    kind: str  # "full" or "sliding": the layer kind that names its calls
    num_heads_q: int
    num_heads_kv: int
    head_dim_qk: int
    head_dim_v: int
    scale: float
    window: int | None = None
    softcap: float = 0.0
    sink: bool = False
    dropout: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelAttention:
    """Every layer's attention of one model config, and where it was read from."""

    model_type: str
    source: str
    reader: str  # "config.json" or "transformers 5.23.0 AutoConfig"
    dtype: Dtype
    max_positions: int | None
    layers: tuple[LayerAttention, ...]


def _need(cfg: dict[str, Any], *names: str) -> list[Any]:
    missing = [n for n in names if n not in cfg]
    if missing:
        raise SpecError("model", f"model_type {cfg['model_type']!r} needs {', '.join(missing)}, which this "
                        "config lacks")
    return [cfg[n] for n in names]


def _positive(cfg: dict[str, Any], name: str, value: Any = None) -> int:
    value = cfg.get(name) if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(name, f"must be a positive integer in a model config, got {value!r}")
    return value


def _heads(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim): an explicit `head_dim` wins over hidden/heads
    (llama configuration_llama.py:87-88, qwen2 modeling_qwen2.py `getattr(config, "head_dim", ...)`)."""
    _need(cfg, *CORE)
    heads, kv = _positive(cfg, "num_attention_heads"), _positive(cfg, "num_key_value_heads")
    if heads % kv:
        raise SpecError("num_key_value_heads", f"{kv} does not divide num_attention_heads ({heads})")
    head_dim = cfg.get("head_dim")
    if head_dim is None:
        hidden = _positive(cfg, "hidden_size")
        if hidden % heads:
            raise SpecError("head_dim", f"absent, and hidden_size {hidden} is not a multiple of "
                            f"num_attention_heads {heads}")
        head_dim = hidden // heads
    return heads, kv, _positive(cfg, "head_dim", head_dim)


def _kinds(cfg: dict[str, Any], sliding: Callable[[int], bool]) -> list[str]:
    """Each layer's kind: `layer_types` where the config has it, else the type's own rule."""
    count = _positive(cfg, "num_hidden_layers")
    types = cfg.get("layer_types")
    if types is None:
        return ["sliding" if sliding(i) else "full" for i in range(count)]
    if not isinstance(types, list) or len(types) != count:
        raise SpecError("layer_types", f"must list one type per layer ({count}), got {types!r}"[:200])
    for number, kind in enumerate(types):
        if kind not in LAYER_KINDS:
            raise SpecError("layer_types", f"layer {number} is {kind!r}, which fa4doctor does not read",
                            LAYER_KINDS)
    return [LAYER_KINDS[kind] for kind in types]


def _window(cfg: dict[str, Any], field: str = "sliding_window") -> int | None:
    value = cfg.get(field)
    return None if value is None else _positive(cfg, field, value)


def _dropout(cfg: dict[str, Any]) -> float:
    value = cfg.get("attention_dropout", 0.0) or 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise SpecError("attention_dropout", f"must be a number in [0, 1), got {value!r}")
    return float(value)


def _layers(cfg: dict[str, Any], kinds: list[str], window: int | None, **fixed: Any) -> tuple[LayerAttention, ...]:
    """One `LayerAttention` per layer; `fixed` overrides what `_heads` derives (MLA, scale, softcap).
    A "sliding" layer without a window is a full one, as in the modules (`self.sliding_window =
    config.sliding_window if sliding else None`, modeling_qwen2.py:185)."""
    heads, kv, head_dim = _heads(cfg)
    base = {"num_heads_q": heads, "num_heads_kv": kv, "head_dim_qk": head_dim, "head_dim_v": head_dim,
            "scale": head_dim ** -0.5, "dropout": _dropout(cfg), **fixed}
    kinds = [kind if window is not None else "full" for kind in kinds]
    made = {kind: LayerAttention(kind=kind, window=window if kind == "sliding" else None, **base)
            for kind in set(kinds)}
    return tuple(made[kind] for kind in kinds)


def _count(cfg: dict[str, Any]) -> int:
    return _positive(cfg, "num_hidden_layers")


def _llama(cfg: dict[str, Any]) -> tuple[LayerAttention, ...]:
    """Every layer full and causal, scale head_dim**-0.5 (modeling_llama.py:215-217)."""
    return _layers(cfg, ["full"] * _count(cfg), None)


def _mistral(cfg: dict[str, Any]) -> tuple[LayerAttention, ...]:
    """Every layer passes `config.sliding_window` (modeling_mistral.py:171); the class default is 4096
    (configuration_mistral.py:80), so the field must be present (null: no window)."""
    _need(cfg, "sliding_window")
    return _layers(cfg, ["sliding"] * _count(cfg), _window(cfg))


def _qwen2(cfg: dict[str, Any]) -> tuple[LayerAttention, ...]:
    """Layers from `max_window_layers` on slide when `use_sliding_window` (default false) is set, else
    no layer does (configuration_qwen2.py:84-93)."""
    window, first = None, 0
    if cfg.get("use_sliding_window", False):
        _need(cfg, "sliding_window", "max_window_layers")
        window, first = _window(cfg), cfg["max_window_layers"]
    return _layers(cfg, _kinds(cfg, lambda i: i >= first), window)


def _gemma2(cfg: dict[str, Any]) -> tuple[LayerAttention, ...]:
    """Even layers slide, odd ones are full (configuration_gemma2.py:95-98); the scale is
    query_pre_attn_scalar**-0.5 (modeling_gemma2.py:221); every layer softcaps its logits
    (modeling_gemma2.py:274)."""
    scalar, softcap = _need(cfg, "query_pre_attn_scalar", "attn_logit_softcapping", "sliding_window", "head_dim")[:2]
    if cfg.get("use_bidirectional_attention"):  # modeling_gemma2.py:223: then no layer is causal
        raise SpecError("use_bidirectional_attention", "bidirectional Gemma-2 attention is not read by fa4doctor")
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or softcap < 0):
        raise SpecError("attn_logit_softcapping", f"must be null or a number >= 0, got {softcap!r}")
    kinds = _kinds(cfg, lambda i: (i + 1) % 2 == 1)
    return _layers(cfg, kinds, _window(cfg), scale=_positive(cfg, "query_pre_attn_scalar", scalar) ** -0.5,
                   softcap=float(softcap or 0.0))


def _gpt_oss(cfg: dict[str, Any]) -> tuple[LayerAttention, ...]:
    """Layers alternate sliding and full (configuration_gpt_oss.py:83-86, or `layer_types`); every
    layer has a learnable sink per query head in its softmax (modeling_gpt_oss.py:285, 321)."""
    _need(cfg, "sliding_window", "head_dim")
    return _layers(cfg, _kinds(cfg, lambda i: (i + 1) % 2 == 1), _window(cfg), sink=True)


def _yarn_scale(cfg: dict[str, Any], scale: float) -> float:
    """`yarn_apply_mscale` (modeling_deepseek_v3.py:262-274): a YaRN rope with `mscale_all_dim`
    multiplies the softmax scale by mscale**2. Raw configs say `type`, transformers `rope_type`."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    all_dim = rope.get("mscale_all_dim", 0)
    if rope.get("rope_type", rope.get("type", "default")) == "default" or not all_dim:
        return scale
    factor = rope.get("factor", 1)
    mscale = 1.0 if factor <= 1 else 0.1 * all_dim * math.log(factor) + 1.0
    return scale * mscale * mscale


def _deepseek_v3(cfg: dict[str, Any]) -> tuple[LayerAttention, ...]:
    """MLA: q and k carry qk_nope_head_dim + qk_rope_head_dim, v carries v_head_dim, and k/v are
    expanded to every query head (modeling_deepseek_v3.py:393-396, 412-414)."""
    nope, rope, v = _need(cfg, "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    qk = _positive(cfg, "qk_nope_head_dim", nope) + _positive(cfg, "qk_rope_head_dim", rope)
    heads = _positive(cfg, "num_attention_heads")
    return _layers(cfg, ["full"] * _count(cfg), None, num_heads_kv=heads, head_dim_qk=qk,
                   head_dim_v=_positive(cfg, "v_head_dim", v), scale=_yarn_scale(cfg, qk ** -0.5))


READERS: dict[str, Callable[[dict[str, Any]], tuple[LayerAttention, ...]]] = {
    "llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "gemma2": _gemma2, "gpt_oss": _gpt_oss,
    "deepseek_v3": _deepseek_v3}
UNDERSTOOD: tuple[str, ...] = tuple(sorted(READERS))


def _dtype(cfg: dict[str, Any]) -> Dtype:
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16"  # transformers 5 writes `dtype`
    if name not in _DTYPES:
        raise SpecError("dtype", f"unknown torch_dtype {name!r} in the model config", _DTYPES)
    return _DTYPES[name]


def _refuse_unknown(cfg: dict[str, Any], source: str) -> None:
    model_type = cfg.get("model_type")
    if not model_type:
        raise SpecError("model_type", f"{source} names no model_type, so its attention is not guessed", UNDERSTOOD)
    if model_type in READERS:
        return
    lacks = [name for name in CORE if name not in cfg]
    what = f"it lacks {', '.join(lacks)}" if lacks else \
        f"it has {', '.join(CORE)}, but not what its type does with windows, softcap, sinks or head dims"
    raise SpecError("model_type", f"{model_type!r} in {source} is not understood, so its attention is not "
                    f"guessed: {what}", UNDERSTOOD)


def _through_transformers(cfg: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The config as transformers' own class fills it (defaults, `layer_types`), or None without it."""
    try:
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:
        return None
    if cfg["model_type"] not in CONFIG_MAPPING:
        return None
    try:
        config = CONFIG_MAPPING[cfg["model_type"]](**{k: v for k, v in cfg.items() if k != "model_type"})
    except Exception as exc:  # noqa: BLE001 (strict config validation raises several types)
        raise SpecError("model", f"transformers {transformers.__version__} refuses this config: "
                        f"{type(exc).__name__}: {exc}") from None
    return {**cfg, **config.to_dict()}, f"transformers {transformers.__version__} AutoConfig"


def read_model(cfg: dict[str, Any], source: str = "config", use_transformers: bool | None = None) -> ModelAttention:
    """A config dict read into `ModelAttention`. The JSON's own fields are checked first (so a
    missing field is named whether or not transformers is installed); then, with `use_transformers`
    (default: where installed), the layers are read again from transformers' filled-in config."""
    if not isinstance(cfg, dict):
        raise SpecError("model", f"{source} is not a JSON object")
    _refuse_unknown(cfg, source)
    reader, how = READERS[cfg["model_type"]], "config.json"
    layers = reader(cfg)
    filled = _through_transformers(cfg) if use_transformers is not False else None
    if filled is not None:
        cfg, how = filled
        layers = reader(cfg)
    positions = cfg.get("max_position_embeddings")
    return ModelAttention(cfg["model_type"], source, how, _dtype(cfg),
                          positions if isinstance(positions, int) and positions > 0 else None, layers)


def config_file(path: str | Path) -> Path:
    """`path` itself, or the `config.json` in the folder `path` names."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise SpecError("--model", f"{path} is not a file (give a config.json or a model folder holding one)")
    return path


def load_model(path: str | Path, use_transformers: bool | None = None) -> ModelAttention:
    """Read the transformers config at `path` (a file, or a folder holding `config.json`)."""
    path = config_file(path)
    try:
        cfg = json.loads(path.read_text())
    except OSError as exc:
        raise SpecError("--model", f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise SpecError("--model", f"{path} is not valid JSON: {exc}") from None
    return read_model(cfg, str(path), use_transformers)
