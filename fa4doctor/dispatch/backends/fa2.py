"""FlashAttention-2 (`flash-attn`, module `flash_attn`, extension `flash_attn_2_cuda`).

Facts from FA2 v2.8.3 `flash_api.cpp`, the signatures across releases and TE's filters
(docs/sources.md#flashattention-2, #te-filters).
"""

from __future__ import annotations

from fa4doctor.dispatch.backends.base import Backend, R, cc_text
from fa4doctor.dispatch.backends.te import context_parallel_problems
from fa4doctor import names
from fa4doctor.names import BackendName
from fa4doctor.dispatch.reasons import Reason
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.environment import Environment, GpuFacts


class FA2(Backend):
    NAME = BackendName.FA2
    DISTRIBUTIONS = names.DISTRIBUTIONS[BackendName.FA2]
    GENERATION = 2
    # 2.1 made causal bottom-right (README "2.1: change behavior of causal flag"); TE's floor is
    # 2.1.1 (TE utils.py:123-125). 2.9 is the first release these rules were not checked against.
    MIN_VERSION = "2.1.1"
    MAX_VERSION = "2.9"
    BLACKWELL_MIN_VERSION = "2.7.3"  # first wheels with sm_100/sm_120 (TE utils.py:123-125)
    FWD_ARCH_MAJORS = BWD_ARCH_MAJORS = frozenset({8, 9, 10, 11, 12})  # flash_api.cpp:368-370
    # Compute capabilities with full hd > 192 backward support (TE utils.py:926-946).
    LARGE_HEAD_DIM_CCS = frozenset({(8, 0), (9, 0), (10, 0), (12, 0)})
    FEATURES = {
        "dropout": "",
        "window": "2.3",  # window_size first appears in v2.3.0
        "alibi": "2.4",  # alibi_slopes in v2.4.0
        "deterministic": "2.4.1",
        "kv_cache": "2.5",
        "paged_kv": "2.5",  # block_table; page size % 256 (flash_api.cpp:583)
        "softcap": "2.6",
        "context_parallel": "",  # TE's CP exclusions checked below
        # No learnable_sink: FA2 has no sink argument; TE refuses every FA for a non-vanilla
        # softmax (TE utils.py:1113-1124).
    }

    @classmethod
    def padded_head_dim(cls, spec: AttentionSpec) -> int:
        """The head dim the kernel sees: FA2 needs v's equal to q's, so the adapter zero-pads the
        smaller to the larger, rounded up to a multiple of 8 (TE utils.py:903-946)."""
        return -(-max(spec.head_dim_qk, spec.head_dim_v) // 8) * 8

    @classmethod
    def special_reasons(cls, spec: AttentionSpec, env: Environment, gpu: GpuFacts) -> list[Reason]:
        reasons = []
        if gpu.compute_capability[0] >= 10 and not cls.has_version(env, cls.BLACKWELL_MIN_VERSION):
            reasons.append(Reason(R.VERSION_TOO_OLD, f"{cc_text(gpu)} needs flash-attn >= "
                                  f"{cls.BLACKWELL_MIN_VERSION}, found {cls.version(env)}"))
        padded = cls.padded_head_dim(spec)
        if padded > 256:
            reasons.append(Reason(R.HEAD_DIM_UNSUPPORTED, f"head dim {padded} (padded) is above FA2's 256"))
        elif padded > 192 and gpu.compute_capability not in cls.LARGE_HEAD_DIM_CCS:
            reasons.append(Reason(R.HEAD_DIM_UNSUPPORTED, f"head dim {padded} > 192 needs compute capability "
                                  f"8.0, 9.0, 10.0 or 12.0; this is {cc_text(gpu)}"))
        if spec.softcap > 0 and spec.dropout_p > 0:
            reasons.append(Reason(R.SOFTCAP_UNSUPPORTED, "softcap with dropout is not supported (flash_api.cpp:397)"))
        if spec.num_splits != 1:
            reasons.append(Reason(R.NUM_SPLITS_UNSUPPORTED, "FA2 has no num_splits (TE utils.py:739-748)"))
        if (spec.kv_cache or spec.paged_kv) and gpu.compute_capability == (12, 0):
            # TE utils.py:833-901 turns every FA generation off for a KV cache on SM120.
            reasons.append(Reason(R.KV_CACHE_UNSUPPORTED, f"a KV cache on {cc_text(gpu)} is not supported"))
        reasons += context_parallel_problems(cls.NAME, spec)
        return reasons
