"""Where torch's registry made SDPA's flash kernel FA4, a call FA4 refuses runs SDPA with flash kept
out (`sdpa_kernel`), and the training process reads the registry live. On CPU: the registry is torch
2.13's own, with FA4's register function replaced (the real one imports flash_attn.cute, _fa4.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention as attention
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, _registry

from fa4doctor.dispatch.reasons import BackendName
from fa4doctor.dispatch.selection import decide
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import case_class, fingerprint
from fa4doctor.environment import BackendInstall, Environment, GpuFacts, ImportStatus, LedgerEntry, TorchInfo
from fa4doctor.runtime import dispatcher, local_env
from fa4doctor.runtime.adapters import sdpa as sdpa_adapter

SPEC = AttentionSpec(dtype="bf16", head_dim_qk=64, num_heads_q=2, seqlen_q=8, attn_mask_type="causal",
                     training=True, device="cuda")
SCALE = 64 ** -0.5
needs_registry = pytest.mark.skipif(sdpa_adapter.current_flash_attention_impl is None,
                                    reason="torch < 2.12 has no flash registry")


def fa4_env(impl: str | None, refused: bool) -> Environment:
    """An H100 with flash-attn-4 4.0.0b36 and torch 2.13, whose SDPA flash kernel is `impl`."""
    env = Environment(torch=TorchInfo("2.13.0+cu130", "13.0", flash_registry=True, flash_impls=("FA3", "FA4"),
                                      flash_impl=impl),
                      gpus=(GpuFacts(name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), cuda_index=0),),
                      backends=(BackendInstall(BackendName.FA4, "flash-attn-4", "4.0.0b36", ImportStatus.OK),
                                BackendInstall(BackendName.SDPA, "torch", "2.13.0+cu130", ImportStatus.OK)))
    if refused:  # FA4's backward smoke case for this class failed on this node
        env = env.with_ledger((LedgerEntry(backend=BackendName.FA4, fingerprint=fingerprint(BackendName.FA4, env,
                               env.gpu(0)), case="fa4:bf16-d64-causal", case_class=case_class(SPEC),
                               direction="bwd", outcome="wrong_result", detail="dq max error 1.2"),))
    return env


@pytest.fixture
def seen(monkeypatch):
    """SDPA, recording whether its flash kernel was enabled at each call (bind reads F's attribute)."""
    flags, real = [], F.scaled_dot_product_attention

    def sdpa(*args, **kwargs):
        flags.append(torch.backends.cuda.flash_sdp_enabled())
        return real(*args, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    return flags


@pytest.fixture
def fa4_active(monkeypatch):
    """torch's registry with "FA4" active, as `activate_flash_attention_impl("FA4")` leaves it."""
    class Handle:
        def remove(self):
            pass
    monkeypatch.setitem(_registry._FLASH_ATTENTION_IMPLS, "FA4", lambda: Handle())
    attention.activate_flash_attention_impl("FA4")
    yield
    attention.restore_flash_attention_impl(_raise_warn=False)


def qkv():
    torch.manual_seed(0)
    return [torch.randn(1, 8, 2, 64) for _ in range(3)]


def test_a_refused_fa4_runs_sdpa_with_flash_excluded(seen):
    decision = decide(SPEC, fa4_env("FA4", refused=True))
    assert decision.chosen is BackendName.SDPA and decision.sdpa_excluded
    run = dispatcher._bind(decision, SPEC, SCALE)
    assert SDPBackend.FLASH_ATTENTION not in run.backends and SDPBackend.MATH in run.backends
    out = run(*qkv())
    assert seen == [False] and torch.backends.cuda.flash_sdp_enabled()  # restored after the call
    reference = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in qkv()), is_causal=True)
    torch.testing.assert_close(out, reference.transpose(1, 2))


def test_torchs_own_flash_is_not_restricted(seen):
    decision = decide(SPEC, fa4_env(None, refused=True))
    assert decision.chosen is BackendName.SDPA and decision.sdpa_excluded == ()
    run = dispatcher._bind(decision, SPEC, SCALE)
    assert not hasattr(run, "backends")
    run(*qkv())
    assert seen == [True]


@needs_registry
def test_an_impl_activated_after_bind_is_kept_out(seen, fa4_active):
    attention.restore_flash_attention_impl(_raise_warn=False)
    run = sdpa_adapter.bind(SPEC, SCALE)  # decided and bound with torch's own flash
    run(*qkv())
    attention.activate_flash_attention_impl("FA4")  # nothing checked FA4's rules for this plan
    run(*qkv())
    attention.restore_flash_attention_impl(_raise_warn=False)
    run(*qkv())
    assert seen == [True, False, True]


@needs_registry
def test_the_impl_active_at_bind_keeps_flash(seen, fa4_active):
    # FA4 was active and eligible when this plan was decided: flash stays
    run = sdpa_adapter.bind(SPEC, SCALE)
    run(*qkv())
    assert seen == [True]


@needs_registry
def test_local_env_reads_the_live_registry(fa4_active):
    env = local_env.environment()
    assert (env.torch.flash_registry, env.torch.flash_impl) == (True, "FA4") and "FA4" in env.torch.flash_impls
    attention.restore_flash_attention_impl(_raise_warn=False)
    assert local_env.environment().torch.flash_impl is None  # re-read when a new plan asks
    attention.activate_flash_attention_impl("FA4")
    assert local_env.environment().torch.flash_impl == "FA4"


def test_a_torch_without_the_registry_is_torchs_own_flash(monkeypatch, seen):
    monkeypatch.delattr(attention, "current_flash_attention_impl")
    monkeypatch.delattr(attention, "list_flash_attention_impls")
    monkeypatch.setattr(sdpa_adapter, "current_flash_attention_impl", None)
    local_env.reset()
    env = local_env.environment()
    assert (env.torch.flash_registry, env.torch.flash_impls, env.torch.flash_impl) == (False, (), None)
    assert local_env.live_flash_impl() is None
    run = sdpa_adapter.bind(SPEC, SCALE)
    run(*qkv())
    assert seen == [True]


def test_attention_on_cpu_with_fa4_active_is_unrestricted(fa4_active, seen):
    # the registry swaps CUDA kernels only, so a CPU call keeps every kernel
    q, k, v = qkv()
    out = dispatcher.attention(q, k, v, attn_mask_type="causal")
    assert out.shape == q.shape and seen == [True]
    (plan,) = dispatcher._plans.values()
    assert plan.decision.chosen is BackendName.SDPA and plan.decision.sdpa_excluded == ()
