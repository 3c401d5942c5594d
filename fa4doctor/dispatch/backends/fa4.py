"""FlashAttention-4 (`flash-attn-4`, module `flash_attn.cute`): CuTe DSL kernels, JIT-compiled.

Facts from FA4 `flash_attn/cute/interface.py` (cited as iface@VERSION:LINE, e.g. iface@b36:845 for 4.0.0b36) and TransformerEngine's
`get_attention_backend` (TE utils.py:LINE); the snapshots, and what was checked on an H100 under
docs/validation/, are in docs/sources.md.
"""

from __future__ import annotations

import math

from fa4doctor.dispatch.backends.base import Backend, R, cc_text
from fa4doctor import names
from fa4doctor.names import BackendName
from fa4doctor.dispatch.reasons import Reason
from fa4doctor.dispatch.spec import AttentionSpec, Dtype
from fa4doctor.dispatch.versions import at_least, parse
from fa4doctor.environment import Environment, GpuFacts


class FA4(Backend):
    NAME = BackendName.FA4
    DISTRIBUTIONS = names.DISTRIBUTIONS[BackendName.FA4]
    OBSOLETE_DISTRIBUTIONS = names.OBSOLETE_DISTRIBUTIONS[BackendName.FA4]
    GENERATION = 4
    # b5 is where SM90 training became usable (varlen, windows, head dims beyond 128) and where
    # `_validate_head_dims` first appears, TE's implicit floor (docs/sources.md#fa4-minimum-version).
    MIN_VERSION = "4.0.0b5"
    # b11 is TransformerEngine's tested pin (TE qa/L3_pytorch_FA_versions_test/test.sh).
    RECOMMENDED_VERSION = "4.0.0b11"
    FWD_ARCH_MAJORS = frozenset({8, 9, 10, 11, 12})  # iface@b36:845
    BWD_ARCH_MAJORS = frozenset({9, 10, 11, 12})  # iface@b36:2288: no SM80 backward
    EXPERIMENTAL_ARCH_MAJORS = frozenset({8, 12})  # TE #3341 turns SM8x off; FA #2453 for SM12x
    # b30 (FA PR #2490) reads negative window sides literally, so a top-left causal mask with
    # seqlen_q < seqlen_kv becomes an exact window (semantics.fa_mask; docs/validation/h100-recon.txt).
    NEGATIVE_WINDOWS_SINCE = "4.0.0b30"
    # The other betas a rule turns on, by what arrived there (sources beside each use below).
    SINCE = {"fp8_forward": "4.0.0b10", "sink_backward": "4.0.0b26", "auto_splits_off_sm100": "4.0.0b39"}
    DTYPES = frozenset({Dtype.FP16, Dtype.BF16, Dtype.FP8_E4M3, Dtype.FP8_E5M2})  # iface@b36:801
    FEATURES = {
        "softcap": "",  # backward from b9, checked below
        "learnable_sink": "",  # forward on SM90/10x/11x, backward from b26, checked below
        "window": "",
        "deterministic": "",  # not on SM12x, checked below
        # dropout, ALiBi, bias and KV cache: TE routes none of them to FA4 (TE utils.py:1104-1111,
        # 1382-1411, 1413-1423, 833-901). Context parallelism reaches FA4 on SM100+ only through TE's
        # own CP wrappers since https://github.com/NVIDIA/TransformerEngine/pull/3149; fa4doctor's
        # attention() does not split a sequence across ranks, so it stays refused here.
    }

    @classmethod
    def special_reasons(cls, spec: AttentionSpec, env: Environment, gpu: GpuFacts) -> list[Reason]:
        major = gpu.compute_capability[0]
        reasons = cls._fp8_reasons(spec, env, gpu) + cls._head_dim_reasons(spec, env, gpu)
        if spec.training and spec.gqa and spec.mla and major == 9:
            # flash_bwd_sm90.py:116; raised "AssertionError: GQA backward requires head_dim ==
            # head_dim_v" on an H100 with b36 (docs/validation/h100-gpu-numerics.txt).
            reasons.append(Reason(R.GQA_UNSUPPORTED, f"backward with GQA and head_dim_qk != head_dim_v "
                                  f"asserts on {cc_text(gpu)}"))
        if cls._num_splits_refused(spec.num_splits, major, cls.version(env)):
            reasons.append(Reason(R.NUM_SPLITS_UNSUPPORTED, f"num_splits={spec.num_splits} needs SM100/SM110; "
                                  f"flash-attn-4 {cls.version(env)} takes only num_splits=1"
                                  f"{' or 0' if at_least(cls.version(env), cls.SINCE['auto_splits_off_sm100']) else ''} "
                                  f"on {cc_text(gpu)}"))
        reasons += cls._feature_arch_reasons(spec, env, gpu)  # known bugs: dispatch/known_bugs.py
        return reasons

    @staticmethod
    def _num_splits_refused(num_splits: int, major: int, version: str | None) -> bool:
        if num_splits == 1 or major in (10, 11):
            return False
        # Below b39 "SplitKV not supported on SM 8.0/9.0" (iface@b36:1612, 1631), also for the heuristic's
        # splits (num_splits=0); SM120 asserts num_splits <= 1 (iface@b36:417). From b39 num_splits=0 resolves
        # to 1 off SM100 (flash_attn/cute/config.py 4.0.0b40 L1594-1596; interface.py 4.0.0b40 L193), and
        # num_splits > 1 still raises (config.py 4.0.0b40 L1925-1930).
        return not (num_splits == 0 and at_least(version, FA4.SINCE['auto_splits_off_sm100']))

    @classmethod
    def install_reasons(cls, env: Environment) -> list[Reason]:
        reasons = super().install_reasons(env)
        install = env.backend(cls.NAME)
        cutlass = dict(install.dependencies).get("nvidia-cutlass-dsl") if install else None
        if not reasons and parse(install.version).public == "4.0.0b24" and cutlass \
                and not at_least(cutlass, "4.6.2"):
            # TE backends.py:176-185 refuses exactly this pair with an ImportError.
            reasons.append(Reason(R.KNOWN_BUG, f"flash-attn-4 4.0.0b24 needs nvidia-cutlass-dsl >= 4.6.2, "
                                  f"found {cutlass}"))
        return reasons

    @classmethod
    def _fp8_reasons(cls, spec: AttentionSpec, env: Environment, gpu: GpuFacts) -> list[Reason]:
        if not spec.fp8:
            return []
        # FP8 forward only on arch//10 == 10, never with gradients (iface@b36:857-861, 925).
        if gpu.compute_capability[0] != 10 or spec.training:
            return [Reason(R.FP8_UNSUPPORTED, f"FP8 runs forward-only on compute capability 10.x; "
                           f"asked for {'training' if spec.training else 'inference'} on {cc_text(gpu)}")]
        if not cls.has_version(env, cls.SINCE["fp8_forward"]):  # FP8 forward arrived in b10 (commit b65ae6b1)
            return [Reason(R.FP8_UNSUPPORTED, f"FP8 needs flash-attn-4 >= {cls.SINCE['fp8_forward']}, "
                           f"found {cls.version(env)}")]
        return []

    @classmethod
    def _head_dim_reasons(cls, spec: AttentionSpec, env: Environment, gpu: GpuFacts) -> list[Reason]:
        major, dims = gpu.compute_capability[0], (spec.head_dim_qk, spec.head_dim_v)
        problem = head_dim_problem(spec.head_dim_qk, spec.head_dim_v, major,
                                   spec.dtype, spec.training, spec.seqlen_q != spec.seqlen_kv)
        if problem:
            return [Reason(R.HEAD_DIM_UNSUPPORTED, problem)]
        since = SM100_HEAD_DIMS_SINCE.get(dims) if major in (10, 11) else None
        if since and not cls.has_version(env, since):
            return [Reason(R.HEAD_DIM_UNSUPPORTED, f"head dims {dims} on {cc_text(gpu)} need flash-attn-4 "
                           f">= {since}, found {cls.version(env)}")]
        return []

    @classmethod
    def _feature_arch_reasons(cls, spec: AttentionSpec, env: Environment, gpu: GpuFacts) -> list[Reason]:
        major, reasons = gpu.compute_capability[0], []
        if spec.learnable_sink and major not in (9, 10, 11):
            # SM80 asserts (flash_fwd.py:651); SM12x uses the SM80 kernel.
            reasons.append(Reason(R.SINK_UNSUPPORTED, f"learnable sink has no kernel on {cc_text(gpu)}"))
        elif spec.learnable_sink and spec.training and not cls.has_version(env, cls.SINCE["sink_backward"]):
            reasons.append(Reason(R.SINK_UNSUPPORTED, f"learnable-sink backward needs flash-attn-4 >= "
                                  f"{cls.SINCE['sink_backward']} (FA PR #2706), found {cls.version(env)}"))
        if spec.deterministic and spec.training and major == 12:
            reasons.append(Reason(R.DETERMINISTIC_UNSUPPORTED, f"deterministic backward asserts on "
                                  f"{cc_text(gpu)} (iface@b36:2352)"))
        return reasons


# SM100/SM110 head-dim shapes newer than the b5 floor: (64, 512) MLA-absorbed arrived in b9,
# the dedicated (256, 256) kernel in b11 (FA PR #2412); docs/sources.md#fa4-head-dims.
SM100_HEAD_DIMS_SINCE = {(64, 512): "4.0.0b9", (256, 256): "4.0.0b11"}


def head_dim_problem(hd: int, hd_v: int, major: int, dtype: Dtype, training: bool,
                     cross: bool) -> str | None:
    """Why FA4 refuses these head dims on this architecture, or None.

    The same rule FA4's `_validate_head_dims` applies (iface@b36:121-139), then TE's SM100 exclusions.
    """
    alignment = 16 // dtype.itemsize
    aligned = hd % alignment == 0 and hd_v % alignment == 0
    if major in (8, 9, 12):
        # FA4 skips validation on SM8x/12x (iface@b36:848, 2569); the kernels share SM90's limits
        # (smem), so the SM90 range is the conservative reading.
        if 8 <= hd <= 256 and 8 <= hd_v <= 256 and aligned:
            return None
        return (f"(head_dim_qk, head_dim_v)=({hd}, {hd_v}) is not supported on SM{major}x: both must be "
                f"between 8 and 256 and divisible by {alignment}")
    standard = 8 <= hd <= 128 and 8 <= hd_v <= 128
    shapes = standard or (hd, hd_v) == (192, 128) or (hd_v == 512 and hd in (64, 512)) or (hd, hd_v) == (256, 256)
    if not (shapes and aligned):
        return (f"(head_dim_qk, head_dim_v)=({hd}, {hd_v}) is not supported on SM{major}x: FA4 takes "
                f"[8,128]x[8,128], (192,128), (64,512), (512,512) or (256,256), divisible by {alignment}")
    if (hd, hd_v) == (512, 512):
        return "(512, 512) passes FA4's validator but runs out of TMEM on SM100 (TE utils.py:1013-1025)"
    if (hd, hd_v) == (256, 256) and cross:
        return "(256, 256) with seqlen_q != seqlen_kv diverges from the reference on SM100 (TE utils.py:1026-1042)"
    if training and hd != hd_v and hd >= 128 and _mla_bwd_misaligned(hd, hd_v):
        return (f"(head_dim_qk, head_dim_v)=({hd}, {hd_v}) hits the SM100 backward dK_reduce_ncol "
                "misalignment (TE utils.py:1044-1069)")
    return None


def _mla_bwd_misaligned(hd: int, hd_v: int) -> bool:
    # TE utils.py:1044-1069: the dV TMEM load atom reuses dK_reduce_ncol = gcd(32, tile_hdim // 2).
    tile_hdim, tile_hdimv = math.ceil(hd / 16) * 16, math.ceil(hd_v / 16) * 16
    return (tile_hdimv // 2) % math.gcd(32, tile_hdim // 2) != 0
