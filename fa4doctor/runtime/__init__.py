"""The runtime of the vetted dispatcher: `attention()` turns tensors into a spec, takes the plan the
rules in `fa4doctor.dispatch` decided, calls the chosen backend's adapter and counts the call.

Importing this package costs nothing (no torch, no CUDA); `attention` loads on first use.
"""

from __future__ import annotations

from fa4doctor._lazy import lazy_exports

_EXPORTS = {"attention": "fa4doctor.runtime.dispatcher", "python_attention": "fa4doctor.runtime.dispatcher"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
