"""The runtime reads the facts a ledger fingerprint hashes exactly as the probe does, so a smoke
failure recorded by `fa4doctor smoke` is refused by `attention()` in a training process."""

from __future__ import annotations

from pathlib import Path

from probe_fakes import NVML_FIXTURES, fa4, fa4_deps

from fa4doctor.dispatch import select
from fa4doctor.runtime import local_env
from fa4doctor.names import BackendName
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import fingerprint
from fa4doctor.environment import GpuFacts, LedgerEntry
from fa4doctor.probe import ledger
from fa4doctor.probe.gather import gather_environment
from fa4doctor.probe.nvml import FakeNvml

H100 = NVML_FIXTURES / "healthy_h100.json"
FA4 = BackendName.FA4


def test_a_smoke_failure_the_probe_recorded_is_refused_at_runtime(tmp_path: Path, monkeypatch):
    site = tmp_path / "site"
    fa4(site)
    fa4_deps(site)
    monkeypatch.syspath_prepend(str(site))
    path = tmp_path / "ledger.json"
    monkeypatch.setenv("FA4DOCTOR_LEDGER", str(path))
    probed = gather_environment(nvml=FakeNvml.from_file(H100), check_imports=False, environ={}, ledger_path=path)
    gpu = probed.gpu(0)
    ledger.record([LedgerEntry(backend=FA4, fingerprint=fingerprint(FA4, probed, gpu), case="fa4:bf16-d128",
                               dtype="bf16", head_dim_qk=128, head_dim_v=128, attn_mask_type="causal",
                               window=False, direction="bwd", outcome="wrong_result", detail="dq max error 1.2")],
                  path)
    # what torch.cuda and NVML say on that node
    monkeypatch.setattr(local_env, "cuda_gpus", lambda: (GpuFacts(name=gpu.name, compute_capability=gpu.compute_capability,
                                                                   cuda_index=0, uuid=gpu.uuid),))
    monkeypatch.setattr(local_env, "_pynvml", lambda: FakeNvml.from_file(H100))
    local_env.reset()
    runtime = local_env.environment(need_gpus=True)
    assert runtime.backend(FA4).dependencies and runtime.driver.driver_version == probed.driver.driver_version
    assert fingerprint(FA4, runtime, runtime.gpu(0)) == fingerprint(FA4, probed, gpu)
    decision = select(AttentionSpec(dtype="bf16", head_dim_qk=128, attn_mask_type="causal", training=True,
                                    device="cuda"), runtime)
    assert decision.chosen is not FA4
    assert [r.code.value for r in decision.reasons_for(FA4)] == ["smoke_failed"]
