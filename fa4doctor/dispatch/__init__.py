"""The vetted dispatcher: one rule set decides which attention backend runs a call.

`select` decides from facts (`AttentionSpec`, `Environment`, `Policy`); `attention` is the runtime
call that training code uses instead of a backend. Names load on first use, so importing this
package costs nothing (no torch, no CUDA).
"""

from __future__ import annotations

from fa4doctor._lazy import lazy_exports

_EXPORTS = {
    "AttentionSpec": "fa4doctor.dispatch.spec",
    "SpecError": "fa4doctor.dispatch.spec",
    "Dtype": "fa4doctor.dispatch.spec",
    "MaskType": "fa4doctor.dispatch.spec",
    "QkvFormat": "fa4doctor.dispatch.spec",
    "BackendName": "fa4doctor.dispatch.reasons",
    "Decision": "fa4doctor.dispatch.reasons",
    "Reason": "fa4doctor.dispatch.reasons",
    "ReasonCode": "fa4doctor.dispatch.reasons",
    "DispatchError": "fa4doctor.dispatch.reasons",
    "BackendNotEligible": "fa4doctor.dispatch.reasons",
    "FallbackRefused": "fa4doctor.dispatch.reasons",
    "NoBackendAvailable": "fa4doctor.dispatch.reasons",
    "PolicyError": "fa4doctor.dispatch.reasons",
    "Policy": "fa4doctor.dispatch.policy",
    "select": "fa4doctor.dispatch.selection",
    "decide": "fa4doctor.dispatch.selection",
    "attention": "fa4doctor.runtime.dispatcher",
    "agree": "fa4doctor.cluster.training",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
