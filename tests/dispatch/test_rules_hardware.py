"""Compute capability per backend and direction, devices, dtypes: derived from the backends' data."""

from __future__ import annotations

import pytest

from fa4doctor.dispatch.backends import BY_NAME, PRIORITY
from fa4doctor.dispatch.backends.sdpa import kernels
from fa4doctor.dispatch.reasons import BackendName, ReasonCode
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec, Dtype

from .dispatch_envs import ALL_CCS, codes, make_env, only

R, B = ReasonCode, BackendName
FLASH = (B.FA4, B.FA3, B.FA2)
ARCH_CODES = {R.ARCH_UNSUPPORTED, R.BACKWARD_UNSUPPORTED}


def test_documented_architectures():
    # Issue 2: FA4 forward 8.x-12.x, backward 9.x-12.x; FA3 9.0 only; FA2 >= 8.0.
    assert BY_NAME[B.FA4].FWD_ARCH_MAJORS == {8, 9, 10, 11, 12}
    assert BY_NAME[B.FA4].BWD_ARCH_MAJORS == {9, 10, 11, 12}
    assert BY_NAME[B.FA2].FWD_ARCH_MAJORS == BY_NAME[B.FA2].BWD_ARCH_MAJORS == {8, 9, 10, 11, 12}


def _expected_arch_ok(backend: BackendName, cc: tuple[int, int], training: bool) -> bool:
    data = BY_NAME[backend]
    ok = cc[0] in data.FWD_ARCH_MAJORS and (not training or cc[0] in data.BWD_ARCH_MAJORS)
    return ok and (backend is not B.FA3 or cc == (9, 0))


@pytest.mark.parametrize("backend", FLASH)
@pytest.mark.parametrize("cc", ALL_CCS)
@pytest.mark.parametrize("training", [True, False])
def test_compute_capability_per_direction(backend, cc, training):
    spec = AttentionSpec(training=training, head_dim_qk=64)
    found = codes(backend, spec, only(backend, cc, "2.8.3" if backend is B.FA2 else None))
    assert (not (found & ARCH_CODES)) is _expected_arch_ok(backend, cc, training), found


def test_fa4_on_sm80_is_inference_only_and_experimental():
    env = only(B.FA4, (8, 0))
    assert codes(B.FA4, AttentionSpec(), env) == {R.BACKWARD_UNSUPPORTED}
    assert codes(B.FA4, AttentionSpec(training=False), env) == set()


@pytest.mark.parametrize("backend", FLASH)
def test_tensors_off_cuda_go_to_sdpa(backend):
    from fa4doctor.dispatch.selection import decide

    decision = decide(AttentionSpec(device="cpu"), only(backend, (9, 0)))
    assert R.NOT_CUDA in {r.code for r in decision.reasons_for(backend)}
    assert decision.chosen is B.SDPA


def test_no_gpu_with_that_ordinal():
    assert R.NO_GPU in codes(B.FA4, AttentionSpec(), only(B.FA4, (9, 0)), gpu=3)
    assert R.NO_GPU in codes(B.FA4, AttentionSpec(), make_env(None, fa4="4.0.0b36"))


def _dtype_env(backend: BackendName):
    # The architecture where each backend takes the most dtypes (FA4 FP8 lives on SM100 only).
    return only(backend, (10, 0) if backend is B.FA4 else (9, 0))


@pytest.mark.parametrize("backend", [b.NAME for b in PRIORITY])
@pytest.mark.parametrize("dtype", list(Dtype))
def test_dtypes_from_data(backend, dtype):
    spec = AttentionSpec(dtype=dtype, training=False, head_dim_qk=64)
    found = codes(backend, spec, _dtype_env(backend)) & {R.DTYPE_UNSUPPORTED, R.FP8_UNSUPPORTED}
    assert (not found) is (dtype in BY_NAME[backend].DTYPES), found


@pytest.mark.parametrize("cc", [(8, 0), (9, 0), (10, 0), (12, 0)])
def test_fp64_runs_on_sdpa_and_its_math_kernel_only(cc):
    # CUDA's flash, memory-efficient and cuDNN kernels take no fp64 (sdp_utils.cpp `can_use_*`); math does.
    spec = AttentionSpec(dtype="fp64", head_dim_qk=64, attn_mask_type="causal", device="cuda")
    env = make_env(cc, fa4="4.0.0b40", fa2="2.8.3", fa3="3.0.0" if cc == (9, 0) else None)
    decision = decide(spec, env)
    installed = [b for b in FLASH if b is not B.FA3 or cc == (9, 0)]
    assert decision.chosen is B.SDPA and all(R.DTYPE_UNSUPPORTED in codes(b, spec, env) for b in installed)
    assert [name for name, why in kernels(spec, env) if not why] == ["math"]


@pytest.mark.parametrize("cc, training, version, ok", [
    ((10, 0), False, "4.0.0b36", True), ((10, 0), True, "4.0.0b36", False),  # forward only
    ((10, 3), False, "4.0.0b36", True),
    ((9, 0), False, "4.0.0b36", False), ((11, 0), False, "4.0.0b36", False), ((12, 0), False, "4.0.0b36", False),
    ((10, 0), False, "4.0.0b9", False), ((10, 0), False, "4.0.0b10", True),  # FP8 arrived in b10
])
@pytest.mark.parametrize("dtype", [Dtype.FP8_E4M3, Dtype.FP8_E5M2])
def test_fa4_fp8(cc, training, version, ok, dtype):
    spec = AttentionSpec(dtype=dtype, training=training, head_dim_qk=64)
    assert (R.FP8_UNSUPPORTED not in codes(B.FA4, spec, only(B.FA4, cc, version))) is ok


@pytest.mark.parametrize("training, ok", [(False, True), (True, False)])
def test_fa3_fp8_e4m3_is_inference_only(training, ok):
    spec = AttentionSpec(dtype="fp8_e4m3", training=training, head_dim_qk=64)
    assert (not codes(B.FA3, spec, only(B.FA3))) is ok
