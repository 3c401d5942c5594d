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
from ledger_helpers import flat_entry

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
    ledger.record([flat_entry(backend=FA4, fingerprint=fingerprint(FA4, probed, gpu), case="fa4:bf16-d128",
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


def test_the_runtime_reads_fa4_knobs_as_the_probe_does(tmp_path: Path, monkeypatch):
    """A failure proven under FA_DISABLE_2CTA=1 is refused under it, and says nothing without it."""
    from fa4doctor.probe.knobs import KNOBS

    site = tmp_path / "site"
    fa4(site)
    fa4_deps(site)
    monkeypatch.syspath_prepend(str(site))
    path = tmp_path / "ledger.json"
    monkeypatch.setenv("FA4DOCTOR_LEDGER", str(path))
    for knob in KNOBS:
        monkeypatch.delenv(knob.name, raising=False)
    knobs = {"FLASH_ATTENTION_ARCH": "sm_90", "FA_DISABLE_2CTA": "1", "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1"}
    probed = gather_environment(nvml=FakeNvml.from_file(H100), check_imports=False, environ=knobs, ledger_path=path)
    gpu = probed.gpu(0)
    assert [k.name for k in probed.knobs] == list(knobs)
    ledger.record([flat_entry(backend=FA4, fingerprint=fingerprint(FA4, probed, gpu), case="fa4:bf16-d128",
                              dtype="bf16", head_dim_qk=128, head_dim_v=128, attn_mask_type="causal",
                              window=False, direction="bwd", outcome="wrong_result")], path)
    monkeypatch.setattr(local_env, "cuda_gpus", lambda: (GpuFacts(name=gpu.name, compute_capability=gpu.compute_capability,
                                                                   cuda_index=0, uuid=gpu.uuid),))
    monkeypatch.setattr(local_env, "_pynvml", lambda: FakeNvml.from_file(H100))
    spec = AttentionSpec(dtype="bf16", head_dim_qk=128, attn_mask_type="causal", training=True, device="cuda")

    def runtime_codes():
        local_env.reset()
        runtime = local_env.environment(need_gpus=True)
        return runtime, [r.code.value for r in select(spec, runtime).reasons_for(FA4)]

    for name, value in knobs.items():
        monkeypatch.setenv(name, value)
    runtime, codes = runtime_codes()
    assert runtime.knobs == probed.knobs and codes == ["smoke_failed"]
    assert fingerprint(FA4, runtime, runtime.gpu(0)) == fingerprint(FA4, probed, gpu)
    monkeypatch.delenv("FA_DISABLE_2CTA")
    runtime, codes = runtime_codes()
    assert fingerprint(FA4, runtime, runtime.gpu(0)) != fingerprint(FA4, probed, gpu)
    assert "smoke_failed" not in codes


def test_a_bad_ledger_never_breaks_attention_and_is_logged_once_per_process(tmp_path: Path, monkeypatch, caplog):
    """Issue 13 item 1: a ledger that is not UTF-8 made every attention() raise UnicodeDecodeError."""
    import torch

    from fa4doctor.dispatch import attention

    path = tmp_path / "ledger.json"
    path.write_bytes(b"\xff\xfe{}")
    monkeypatch.setenv("FA4DOCTOR_LEDGER", str(path))
    monkeypatch.setattr(local_env, "_ledger_warned", False, raising=False)
    caplog.set_level("WARNING", logger="fa4doctor.dispatch")
    for head_dim in (16, 32):  # a fresh environment each time: the ledger is read again
        local_env.reset()
        q = torch.randn(1, 8, 2, head_dim)
        assert attention(q, q, q).shape == q.shape
    warnings = [r.getMessage() for r in caplog.records if "ledger" in r.getMessage()]
    assert len(warnings) == 1 and "not UTF-8" in warnings[0] and str(path) in warnings[0]
