"""FlashAttention-3 (`flash_attn_3`, module `flash_attn_interface`): the Hopper build.

Facts from FA `hopper/flash_api.cpp` and `hopper/setup.py` and TE's filters
(docs/sources.md#flashattention-3, #te-filters). FA3 is not on PyPI; it is built from source.
"""

from __future__ import annotations

from fa4doctor.dispatch.backends.base import Backend, R, cc_text
from fa4doctor.dispatch.backends.te import context_parallel_problems
from fa4doctor import names
from fa4doctor.names import BackendName
from fa4doctor.dispatch.reasons import Reason
from fa4doctor.dispatch.spec import AttentionSpec, Dtype
from fa4doctor.environment import Environment, GpuFacts


class FA3(Backend):
    NAME = BackendName.FA3
    DISTRIBUTIONS = names.DISTRIBUTIONS[BackendName.FA3]
    # Only `major == 3`: the range `3.0.0b < v < 4.0.0` of TE PR #2432 also matched FA4 betas,
    # because 4.0.0b8 < 4.0.0 under PEP 440 (fixed in TE #2910; docs/sources.md#te-version-ranges).
    GENERATION = 3
    FWD_ARCH_MAJORS = BWD_ARCH_MAJORS = frozenset({9})  # sm_90a kernels only; minor checked below
    DTYPES = frozenset({Dtype.FP16, Dtype.BF16, Dtype.FP8_E4M3})  # flash_api.cpp:715-719
    FEATURES = {
        "softcap": "",
        "window": "",
        "deterministic": "",  # not with a rounded head dim of 256, checked below
        "kv_cache": "",  # flash_attn_with_kvcache
        "paged_kv": "",
        "context_parallel": "",  # TE's CP exclusions checked below
        # No dropout_p and no alibi_slopes in FA3's Python signatures (PR #2223 "missing dropout").
        # No learnable_sink either: TE refuses every FA for a non-vanilla softmax (TE
        # utils.py:1113-1124).
    }

    @classmethod
    def special_reasons(cls, spec: AttentionSpec, env: Environment, gpu: GpuFacts) -> list[Reason]:
        reasons = []
        if gpu.compute_capability != (9, 0):
            # TE utils.py:568-596: FA3 only when CC == (9, 0).
            reasons.append(Reason(R.ARCH_UNSUPPORTED, f"{cc_text(gpu)}: FA3 runs on compute capability 9.0 only"))
        if spec.fp8 and spec.training:
            reasons.append(Reason(R.FP8_UNSUPPORTED, "FP8 is forward-only in FA3 (flash_api.cpp:1300-1302)"))
        problem = head_dim_problem(spec.head_dim_qk, spec.head_dim_v, spec.training, spec.dtype)
        if problem:
            reasons.append(Reason(R.HEAD_DIM_UNSUPPORTED, problem))
        if spec.deterministic and spec.training and max(spec.head_dim_qk, spec.head_dim_v) > 192:
            # flash_api.cpp:1370; TE utils.py:1504-1536.
            reasons.append(Reason(R.DETERMINISTIC_UNSUPPORTED, "deterministic backward with a rounded head "
                                  "dim of 256 is not supported"))
        reasons += context_parallel_problems(cls.NAME, spec)
        return reasons


def head_dim_problem(hd: int, hd_v: int, training: bool, dtype: Dtype = Dtype.BF16) -> str | None:
    """FA3's head-dim rule (flash_api.cpp:780-791; TE `_is_fa3_supported`)."""
    if hd > 256:
        return f"head_dim_qk={hd} is above FA3's 256"
    if hd != hd_v and not ((128 < hd <= 192 and 96 < hd_v <= 128) or (hd <= 64 and hd_v <= 512)):
        return (f"(head_dim_qk, head_dim_v)=({hd}, {hd_v}): FA3 takes different head dims only for "
                "(128,192]x(96,128] or (<=64, <=512)")
    if hd_v > 256 and dtype.is_fp8:
        return f"head_dim_v={hd_v} > 256 needs fp16 or bf16 (TE _is_fa3_supported)"
    if training and (hd % 8 or hd_v % 8):
        return f"the backward needs head dims divisible by 8, got ({hd}, {hd_v})"
    return None
