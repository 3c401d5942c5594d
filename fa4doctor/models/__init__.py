"""Model configs in: a transformers `config.json` read into every distinct attention call the model makes.

`load_model(path)` reads the config (a file, or a folder holding `config.json`) into a
`ModelAttention` (what each layer's attention is); `model_calls(model)` turns that into one
`ModelCall` per distinct call, per phase (train, prefill, decode), each with its `AttentionSpec`
and the layers that make it. Pure: no torch, and transformers only where it is installed.
"""

from __future__ import annotations

from fa4doctor._lazy import lazy_exports

_EXPORTS = {
    "UNDERSTOOD": "fa4doctor.models.config",
    "LayerAttention": "fa4doctor.models.config",
    "ModelAttention": "fa4doctor.models.config",
    "load_model": "fa4doctor.models.config",
    "read_model": "fa4doctor.models.config",
    "ModelCall": "fa4doctor.models.calls",
    "model_calls": "fa4doctor.models.calls",
    "model_specs": "fa4doctor.models.calls",
    "layers_text": "fa4doctor.models.calls",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
