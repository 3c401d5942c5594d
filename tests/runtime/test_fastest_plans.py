"""`FA4DOCTOR_POLICY=fastest` in `attention()`: decided once per plan from the ledger's speed
records, SDPA bound to its measured-fastest kernel where that pays, and a plan class per speed
bucket (never a timing on the call path)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from torch.nn.attention import SDPBackend

from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.reasons import BackendName
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.speed import FWD_BWD, shape_class
from fa4doctor.dispatch.vetting import case_class, fingerprint
from fa4doctor.environment import (BackendInstall, DriverInfo, Environment, GpuFacts, ImportStatus, LedgerEntry,
                                   SpeedEntry, TorchInfo)
from fa4doctor.runtime import dispatcher as runtime, local_env
from fa4doctor.runtime.inputs import Prepared
from fa4doctor.runtime.plan_class import plan_class

H100 = GpuFacts(name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), cuda_index=0, nvml_index=0, uuid="GPU-a")
SPEC = AttentionSpec(dtype="bf16", head_dim_qk=64, num_heads_q=12, seqlen_q=2048, attn_mask_type="causal",
                     device="cuda")
NODE = Environment(torch=TorchInfo(version="2.11.0+cu130", cuda="13.0"), gpus=(H100,),
                   driver=DriverInfo(nvml_status="ok", driver_version="580.159.04"),
                   backends=(BackendInstall(BackendName.FA4, "flash-attn-4", "4.0.0b40", ImportStatus.OK),))


def _node(own_ms: float) -> Environment:
    """Both backends vetted for SPEC's class; cuDNN measured fastest, torch's own choice at `own_ms`."""
    entries = tuple(LedgerEntry(backend=b, fingerprint=fingerprint(b, NODE, H100), case="x",
                                case_class=case_class(SPEC), direction=d, outcome="pass", gpu_uuid=H100.uuid)
                    for b in BackendName if b in (BackendName.FA4, BackendName.SDPA) for d in ("fwd", "bwd"))
    figures = ((BackendName.FA4, None, 3.0), (BackendName.SDPA, None, own_ms), (BackendName.SDPA, "cudnn", 1.0))
    speed = tuple(SpeedEntry(backend=b, fingerprint=fingerprint(b, NODE, H100), case="gpt-2 s2048",
                             shape_class=shape_class(SPEC), direction=FWD_BWD, median_ms=ms, kernel=k,
                             gpu_uuid=H100.uuid)
                  for b, k, ms in figures)
    return NODE.with_ledger(entries, speed)


@pytest.fixture
def node(monkeypatch):
    holder = {"env": _node(2.0)}
    monkeypatch.setattr(local_env, "environment", lambda need_gpus=False: holder["env"])
    monkeypatch.setenv("FA4DOCTOR_POLICY", "fastest")
    return holder


def _plan() -> runtime.Plan:
    return runtime._new_plan(Prepared(SPEC, SPEC.head_dim_qk ** -0.5, 0, None))


def test_the_plan_runs_sdpa_kept_to_the_kernel_measured_fastest(node):
    plan = _plan()
    decision = plan.decision
    assert (decision.chosen, decision.sdpa_kernel, decision.outcome) == (BackendName.SDPA, "cudnn", "outpaced")
    assert plan.run.backends == [SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]  # fixed at bind time
    assert plan.tally.fallback is None and not plan.tally.unvetted  # counted as a plain, vetted sdpa call


def test_torch_s_own_choice_runs_unrestricted_when_a_restriction_would_not_pay(node):
    node["env"] = _node(1.005)  # 5 us slower than cuDNN: less than sdpa_kernel's 13.7 us a call
    plan = _plan()
    assert plan.decision.chosen is BackendName.SDPA and plan.decision.sdpa_kernel is None
    assert not hasattr(plan.run, "backends")


def test_the_priority_policy_binds_what_it_always_did(node, monkeypatch):
    monkeypatch.delenv("FA4DOCTOR_POLICY")
    monkeypatch.setattr(runtime, "_bind", lambda decision, spec, scale: lambda *a: None)  # FA4 is not importable here
    monkeypatch.setattr(runtime, "direct", lambda *a: None)
    assert _plan().decision.chosen is BackendName.FA4


def test_a_plan_class_holds_the_speed_bucket_only_under_fastest():
    at = lambda n: replace(SPEC, seqlen_q=n, seqlen_kv=n, same_seqlens=None)  # noqa: E731
    key = lambda n, policy: plan_class(at(n), 0.125, 0, policy)  # noqa: E731
    fastest, priority = Policy(order="fastest"), Policy()
    assert key(1500, fastest) == key(2048, fastest) != key(4096, fastest)
    assert key(1500, priority) == key(4096, priority)


def test_a_policy_set_between_calls_plans_the_same_shape_again(monkeypatch):
    """FA4DOCTOR_POLICY is in the call's key like the other policy variables: a shape already planned
    under `priority` is decided again under `fastest`, not served the old plan."""
    import torch

    planned = []
    class_plan = runtime._class_plan
    monkeypatch.setattr(runtime, "_class_plan", lambda prepared: planned.append(1) or class_plan(prepared))
    monkeypatch.delenv("FA4DOCTOR_POLICY", raising=False)
    runtime.reset()
    q = k = v = torch.randn(1, 8, 2, 16)
    runtime.python_attention(q, k, v)
    runtime.python_attention(q, k, v)
    monkeypatch.setenv("FA4DOCTOR_POLICY", "fastest")
    runtime.python_attention(q, k, v)
    assert len(planned) == 2
