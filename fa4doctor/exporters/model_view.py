"""`--model` output: the attention calls a model config makes, one row per distinct call. Renders, never decides.

>>> from fa4doctor.models.config import read_model
>>> from fa4doctor.models.calls import model_calls
>>> model = read_model({"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4,
...     "num_key_value_heads": 2, "hidden_size": 64}, "demo.json", use_transformers=False)
>>> [row["name"] for row in model_to_plain(model, model_calls(model))["calls"]]
['llama_full_train', 'llama_full_prefill', 'llama_full_decode']
"""

from __future__ import annotations

from typing import IO, Any

from fa4doctor.models.calls import ModelCall, layers_text
from fa4doctor.models.config import ModelAttention


def model_to_plain(model: ModelAttention, calls: tuple[ModelCall, ...]) -> dict[str, Any]:
    """The model and its derived calls as JSON (`explain --model --json` puts it under `model`)."""
    return {"model_type": model.model_type, "source": model.source, "reader": model.reader,
            "dtype": model.dtype.value, "num_layers": len(model.layers),
            "calls": [{"name": c.name, "phase": c.phase, "kind": c.kind, "layers": list(c.layers),
                       "softmax_scale": c.scale, "spec": c.spec.to_dict()} for c in calls]}


HEADER = ("call", "layers", "heads x dim", "seq q/kv", "mask", "window", "softcap", "sink", "scale")


def _row(call: ModelCall) -> list[str]:
    spec = call.spec
    dims = f"{spec.head_dim_qk}" if not spec.mla else f"{spec.head_dim_qk}/{spec.head_dim_v}"
    mask = spec.attn_mask_type.value.replace("_bottom_right", " br")
    window = f"{spec.window_size[0] + 1}" if spec.window_size[0] >= 0 else "-"  # transformers' sliding_window
    return [call.name, layers_text(call.layers), f"{spec.num_heads_q}/{spec.num_heads_kv}x{dims}",
            f"{spec.seqlen_q}/{spec.seqlen_kv}", mask, window, f"{spec.softcap:g}" if spec.softcap else "-",
            "yes" if spec.learnable_sink else "-", f"{call.scale:.4g}"]


def model_lines(model: ModelAttention, calls: tuple[ModelCall, ...]) -> list[str]:
    """The table as plain lines, never cut to the terminal's width (`br`: bottom-right causal;
    window: the keys a query sees, itself included).

    >>> from fa4doctor.models.config import read_model
    >>> from fa4doctor.models.calls import model_calls
    >>> model = read_model({"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4,
    ...     "num_key_value_heads": 2, "hidden_size": 64}, "demo.json", use_transformers=False)
    >>> print(model_lines(model, model_calls(model, seqlen=128))[-1])
    llama_full_decode   0,1     4/2x16       1/128     causal br  -       -        -     0.25
    """
    rows = [list(HEADER)] + [_row(call) for call in calls]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    title = (f"model: {model.source} ({model.model_type}, {len(model.layers)} layers, {model.dtype.value}; "
             f"read by {model.reader})")
    return [title] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def render_model_calls(model: ModelAttention, calls: tuple[ModelCall, ...], file: IO[str]) -> None:
    """Print one row per distinct call, with the layers that make it."""
    file.write("\n".join(model_lines(model, calls)) + "\n")
