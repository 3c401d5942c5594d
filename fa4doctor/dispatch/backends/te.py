"""TransformerEngine's rules that hold for more than one of the FA backends it routes to.

TE is where most training stacks meet FA2/FA3, so its exclusions are the ones a job hits first.
"""

from __future__ import annotations

from fa4doctor.dispatch.reasons import Reason, ReasonCode
from fa4doctor.dispatch.spec import AttentionSpec, MaskType
from fa4doctor.names import BackendName


def context_parallel_problems(name: BackendName, spec: AttentionSpec) -> list[Reason]:
    """TE's context-parallel exclusions for FA2 and FA3 (TE utils.py:1157-1214)."""
    if not spec.context_parallel:
        return []
    problems = []
    if spec.fp8:
        problems.append("FP8")
    if spec.attn_mask_type in (MaskType.CAUSAL_BOTTOM_RIGHT, MaskType.PADDING_CAUSAL_BOTTOM_RIGHT):
        problems.append("bottom-right causal masks")
    if spec.attn_mask_type.is_causal and spec.seqlen_q != spec.seqlen_kv:
        problems.append("causal cross-attention")
    return [Reason(ReasonCode.CONTEXT_PARALLEL_UNSUPPORTED, f"context parallelism in {name.value} (through TE) "
                   f"does not support {', '.join(problems)}")] if problems else []
