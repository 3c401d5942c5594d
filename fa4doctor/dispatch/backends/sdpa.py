"""PyTorch `scaled_dot_product_attention`: the last resort, which must accept every valid spec.

Masks, windows, softcap, ALiBi and sinks that SDPA has no flag for are expressed exactly by the
adapter (explicit masks, or plain math), so the backend never refuses a valid spec. Which of
SDPA's own kernels could serve the call is reported by `kernels`, mirroring the order of checks
in torch's `sdp_utils.cpp` (`can_use_flash_attention`, `can_use_efficient_attention`,
`can_use_cudnn_attention`; docs/sources.md#pytorch-sdpa). Where torch's flash registry (torch >= 2.12) made
SDPA's flash kernel FA4, that kernel is FA4 and is refused where FA4 is: `excluded_kernels` says
which kernels the adapter must keep torch from using, so a fallback from FA4 never runs FA4.
"""

from __future__ import annotations

from fa4doctor.dispatch.backends.base import FEATURE_FLAGS, Backend, R, cc_text
from fa4doctor.dispatch.backends.fa3 import FA3
from fa4doctor.dispatch.backends.fa4 import FA4
from fa4doctor import names
from fa4doctor.names import BackendName
from fa4doctor.dispatch.reasons import Reason
from fa4doctor.dispatch.spec import AttentionSpec, Dtype, MaskType
from fa4doctor.environment import Environment

_CONSUMER_CCS = frozenset({(8, 6), (8, 9), (12, 0), (12, 1)})
# SDPA's kernels as `kernels` names them, in no particular order (torch keeps its own).
KERNELS = ("cudnn", "flash", "efficient", "math")
# torch >= 2.12's registry names (torch/nn/attention/_registry.py, 2.13) -> the backend that then
# runs SDPA's flash kernel: "FA4" registers flash_attn.cute.interface's `_flash_attn_fwd/_bwd` as
# aten's flash ops (_fa4.py `_fa4_register_kernels`), "FA3" flash_attn_interface's (_fa3.py:55).
# An impl not named here is not known to fa4doctor, and is left to torch.
FLASH_IMPLS: dict[str, type[Backend]] = {"FA4": FA4, "FA3": FA3}


class SDPA(Backend):
    NAME = BackendName.SDPA
    DISTRIBUTIONS = names.DISTRIBUTIONS[BackendName.SDPA]
    NEEDS_CUDA = False
    # Every dtype, fp64 included: on CUDA only SDPA's math kernel takes fp64 (`kernels` below refuses the
    # fused ones), on the CPU torch's flash kernel takes it too (docs/sources.md#pytorch-sdpa), and the
    # adapter's own math computes it in fp64.
    DTYPES = frozenset(Dtype)
    FEATURES = {feature: "" for feature, _, _ in FEATURE_FLAGS}  # every one, at every version
    ARBITRARY_MASK = True
    BOTTOM_RIGHT_CAUSAL = False  # the adapter builds whichever diagonal the spec asks for
    LEDGER_BLOCKS = False  # the last resort: a smoke failure is shown as an advisory instead

    @classmethod
    def install_reasons(cls, env: Environment) -> list[Reason]:
        return []  # torch is fa4doctor's own dependency: where fa4doctor runs, SDPA does


def _needs_explicit_mask(spec: AttentionSpec) -> str | None:
    if spec.varlen:
        return "variable-length sequences"
    if spec.has_window:
        return "a sliding window"
    if spec.alibi or spec.bias or spec.learnable_sink:
        return "an additive bias (ALiBi, bias or sink)"
    if spec.attn_mask_type is MaskType.ARBITRARY:
        return "an arbitrary mask"
    return None


def flash_impl_reasons(spec: AttentionSpec, env: Environment, gpu: int = 0,
                       disabled: frozenset[BackendName] = frozenset()) -> tuple[Reason, ...]:
    """Why SDPA's flash kernel must not run `spec` because of what implements it: once torch's
    registry made it FA4 (or FA3), it is that backend, refused where that backend is (its rules,
    its ledger, `disabled` by the policy). Empty for torch's own FA2 and for CPU tensors: only
    CUDA kernels are replaced (_fa4.py `Library("aten", "IMPL", "CUDA")`, torch 2.13).

    >>> from fa4doctor.environment import GpuFacts, TorchInfo
    >>> env = Environment(torch=TorchInfo(flash_registry=True, flash_impl="FA4"),
    ...                   gpus=(GpuFacts(name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), cuda_index=0),))
    >>> str(flash_impl_reasons(AttentionSpec(device="cuda"), env)[0])
    'not_installed: it is FA4 here and FA4 is refused: no flash-attn-4 distribution is installed'
    """
    backend = FLASH_IMPLS.get(env.torch.flash_impl)
    if backend is None or not spec.on_cuda:
        return ()
    found = backend.not_supported_reasons(spec, env, gpu)
    if backend.NAME in disabled:
        found = [Reason(R.DISABLED_BY_POLICY, f"{backend.NAME.value} is disabled by FA4DOCTOR_DISABLE"), *found]
    if not found:
        return ()
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    impl = env.torch.flash_impl
    return (Reason(found[0].code, f"it is {impl} here and {impl} is refused: {found[0].detail}{more}"),)


def excluded_kernels(spec: AttentionSpec, env: Environment, gpu: int = 0,
                     disabled: frozenset[BackendName] = frozenset()) -> tuple[tuple[str, tuple[Reason, ...]], ...]:
    """The SDPA kernels the adapter must keep torch from using for `spec`, each with why: SDPA's
    flash kernel where it is a refused FA4 (`flash_impl_reasons`), else none."""
    found = flash_impl_reasons(spec, env, gpu, disabled)
    return (("flash", found),) if found else ()


def kernels(spec: AttentionSpec, env: Environment, gpu: int = 0,
            disabled: frozenset[BackendName] = frozenset()) -> tuple[tuple[str, tuple[Reason, ...]], ...]:
    """Which SDPA kernel could serve `spec`: (kernel, reasons it cannot), in torch's default order.

    >>> from fa4doctor.environment import Environment
    >>> dict(kernels(AttentionSpec(device="cpu"), Environment()))["math"]
    ()
    """
    facts = env.gpu(gpu) if spec.on_cuda else None
    common: list[Reason] = []
    if facts is None:
        common.append(Reason(R.NOT_CUDA, "the fused kernels run on CUDA devices only"))
    if spec.softcap > 0:
        common.append(Reason(R.SOFTCAP_UNSUPPORTED, "softcap has no SDPA flag; the adapter computes it in plain math"))
    if spec.fp8:
        common.append(Reason(R.FP8_UNSUPPORTED, "SDPA takes no FP8 inputs; the adapter upcasts them"))
    mask = _needs_explicit_mask(spec)
    flash = list(common)
    if mask:
        flash.append(Reason(R.MASK_UNSUPPORTED, f"{mask} needs an explicit mask, which flash does not take"))
    if spec.mla or spec.head_dim_qk > 256:
        flash.append(Reason(R.HEAD_DIM_UNSUPPORTED, "flash needs equal q/k/v head dims <= 256"))
    if spec.dtype not in (Dtype.FP16, Dtype.BF16):
        flash.append(Reason(R.DTYPE_UNSUPPORTED, "flash takes fp16 and bf16"))
    if facts and not (8, 0) <= facts.compute_capability <= (12, 1):
        flash.append(Reason(R.ARCH_UNSUPPORTED, f"flash runs on sm80-sm121, not {cc_text(facts)}"))
    if spec.top_left_misaligned:
        # "Flash attention does not support the is_causal flag when seqlen_q != seqlen_k" (sdp_utils.cpp).
        flash.append(Reason(R.CAUSAL_ALIGNMENT, "flash takes is_causal only when seqlen_q == seqlen_kv"))
    if (facts and facts.compute_capability in _CONSUMER_CCS and spec.training and spec.dropout_p > 0
            and 192 < spec.head_dim_qk <= 256):
        # sdp_utils.cpp: sm86/89/120/121 refuse head dims in (192, 256] for training with dropout.
        flash.append(Reason(R.HEAD_DIM_UNSUPPORTED, f"flash refuses head dim {spec.head_dim_qk} with dropout "
                            f"for training on {cc_text(facts)}"))
    flash += flash_impl_reasons(spec, env, gpu, disabled)
    efficient = list(common)
    if spec.dtype not in (Dtype.FP16, Dtype.BF16, Dtype.FP32):
        efficient.append(Reason(R.DTYPE_UNSUPPORTED, "memory-efficient takes fp16, bf16 and fp32"))
    cudnn = list(common)
    if mask:
        cudnn.append(Reason(R.MASK_UNSUPPORTED, f"{mask} needs an explicit mask; cuDNN is not tried with one here"))
    if facts and not (9, 0) <= facts.compute_capability < (11, 0):
        # Counted only where torch puts cuDNN first (sdp_utils.cpp `priority_order`).
        cudnn.append(Reason(R.ARCH_UNSUPPORTED, f"fa4doctor counts cuDNN attention only on SM90/SM10x, "
                            f"where torch tries it first; not on {cc_text(facts)}"))
    if spec.dtype not in (Dtype.FP16, Dtype.BF16):
        cudnn.append(Reason(R.DTYPE_UNSUPPORTED, "cuDNN takes fp16 and bf16"))
    found = {"cudnn": tuple(cudnn), "flash": tuple(flash), "efficient": tuple(efficient), "math": ()}
    # torch tries cuDNN first on SM90/SM10x with a recent cuDNN, else flash, memory-efficient, cuDNN
    # (sdp_utils.cpp `priority_order`; docs/sources.md#pytorch-sdpa); math is always last and always works.
    first_cudnn = facts is not None and facts.compute_capability[0] in (9, 10)
    order = ("cudnn", "flash", "efficient", "math") if first_cudnn else ("flash", "efficient", "cudnn", "math")
    return tuple((name, found[name]) for name in order)
