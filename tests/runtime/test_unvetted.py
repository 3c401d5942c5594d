"""`fa4doctor_unvetted_calls_total{backend}`: decided once per plan, counted by the plan's tally, carried
by the counter files the daemon sums."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from prometheus_client import CollectorRegistry

from fa4doctor.dispatch import attention
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import case_class, fingerprint
from fa4doctor.environment import DriverInfo, Environment, GpuFacts, LedgerEntry, TorchInfo
from fa4doctor.names import BackendName
from fa4doctor.runtime import counters as metrics, dispatcher as runtime, local_env
from fa4doctor.runtime.inputs import Prepared
from fa4doctor.serve.multiproc import read_dispatch_counters

H100 = GpuFacts(name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), cuda_index=0, nvml_index=0, uuid="GPU-a")
NODE = Environment(torch=TorchInfo(version="2.9.0", cuda="12.8"), gpus=(H100,),
                   driver=DriverInfo(nvml_status="ok", driver_version="580.65.06"))
# A call on the GPU that the rules give to SDPA here (no FA installed): SDPA counts too.
SPEC = AttentionSpec(dtype="bf16", head_dim_qk=64, num_heads_q=2, seqlen_q=16, attn_mask_type="causal",
                     training=False, device="cuda")
SDPA = BackendName.SDPA


def _pass(env: Environment, spec: AttentionSpec = SPEC, outcome: str = "pass") -> LedgerEntry:
    return LedgerEntry(backend=SDPA, fingerprint=fingerprint(SDPA, env, H100), case="sdpa:x",
                       case_class=case_class(spec), direction="fwd", outcome=outcome, gpu_uuid=H100.uuid)


@pytest.fixture
def node(monkeypatch):
    """`_new_plan` on a CPU-only machine as on the GPU node: its environment, and a bound `run` that
    is never called."""
    holder = {"env": NODE}
    monkeypatch.setattr(local_env, "environment", lambda need_gpus=False: holder["env"])
    monkeypatch.setattr(runtime, "_bind", lambda decision, spec, scale: lambda *a: None)
    return holder


def _plan(spec: AttentionSpec = SPEC) -> runtime.Plan:
    return runtime._new_plan(Prepared(spec, spec.head_dim_qk ** -0.5, 0, None))


def _unvetted(registry, backend="sdpa"):
    return registry.get_sample_value("fa4doctor_unvetted_calls_total", {"backend": backend})


def test_a_plan_without_evidence_counts_every_call_as_unvetted(node, fresh_runtime):
    plan = _plan()
    assert plan.decision.chosen is SDPA and plan.tally.unvetted
    plan.tally.n += 3  # the hot path's whole work, as before
    assert _unvetted(fresh_runtime) == 3
    assert fresh_runtime.get_sample_value("fa4doctor_dispatch_calls_total", {"backend": "sdpa"}) == 3


def test_a_passing_ledger_entry_under_the_current_fingerprint_vets_the_plan(node, fresh_runtime):
    node["env"] = NODE.with_ledger((_pass(NODE),))
    plan = _plan()
    assert not plan.tally.unvetted
    plan.tally.n += 2
    assert fresh_runtime.get_sample_value("fa4doctor_dispatch_calls_total", {"backend": "sdpa"}) == 2
    assert not _unvetted(fresh_runtime)  # no series: nothing unvetted ran


@pytest.mark.parametrize("why", ["other fingerprint", "failed", "other class", "training needs bwd"])
def test_evidence_that_does_not_prove_the_call_leaves_it_unvetted(node, fresh_runtime, why):
    spec = SPEC
    entry = _pass(NODE, outcome="wrong_result" if why == "failed" else "pass")
    if why == "other fingerprint":  # proven under torch 2.8, the node runs 2.9 now
        entry = _pass(replace(NODE, torch=TorchInfo(version="2.8.0", cuda="12.8")))
    elif why == "other class":
        entry = _pass(NODE, AttentionSpec(dtype="bf16", head_dim_qk=128, device="cuda"))
    elif why == "training needs bwd":
        spec = AttentionSpec(**{**SPEC.to_dict(), "training": True})
        entry = _pass(NODE, spec)
    node["env"] = NODE.with_ledger((entry,))
    assert _plan(spec).tally.unvetted


def test_vetted_and_unvetted_plans_keep_separate_tallies(node, fresh_runtime):
    unvetted = _plan()
    node["env"] = NODE.with_ledger((_pass(NODE),))
    vetted = _plan()
    assert vetted.tally is not unvetted.tally and vetted.tally.backend == unvetted.tally.backend
    unvetted.tally.n += 1
    vetted.tally.n += 4
    assert _unvetted(fresh_runtime) == 1
    assert fresh_runtime.get_sample_value("fa4doctor_dispatch_calls_total", {"backend": "sdpa"}) == 5


def test_calls_off_the_gpu_are_never_counted(fresh_runtime):
    q = torch.randn(1, 4, 2, 8)
    attention(q, q, q)
    assert not runtime._plans[next(iter(runtime._plans))].tally.unvetted
    assert not _unvetted(fresh_runtime)


def test_the_counter_files_carry_it_and_the_daemon_sums_it(node, tmp_path):
    for n in (2, 5):  # two writers, as two training processes write two files
        counters = metrics.DispatchCounters(registry=CollectorRegistry(), directory=tmp_path)
        metrics.install(counters)
        _plan().tally.n += n
        counters.flush()
        runtime.reset()
    snapshot = read_dispatch_counters(tmp_path)
    samples = {(s.name, s.labels.get("backend")): s.value for f in snapshot.families for s in f.samples}
    assert samples[("fa4doctor_unvetted_calls_total", "sdpa")] == 7
    assert samples[("fa4doctor_dispatch_calls_total", "sdpa")] == 7
