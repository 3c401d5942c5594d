"""torch's flash registry (torch >= 2.12) as the probe reports it: from the torch import child (never
in the probe's own process), into the snapshot, the `check` text and a Prometheus info family."""

from __future__ import annotations

import io

import pytest
from probe_fakes import write_dist
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.exposition import generate_latest
from rich.console import Console

from fa4doctor.dispatch.report import build_report
from fa4doctor.environment import Environment, ImportStatus, TorchInfo
from fa4doctor.exporters.check_view import flash_text, render_check
from fa4doctor.exporters.metrics_env import environment_families
from fa4doctor.names import BackendName
from fa4doctor.probe import imports
from fa4doctor.probe.gather import gather_environment
from fa4doctor.probe.imports import ImportResult, run_imports
from fa4doctor.probe.nvml import FakeNvml

SDPA = BackendName.SDPA
FA4_ACTIVE = TorchInfo("2.13.0+cu130", "13.0", flash_registry=True, flash_impls=("FA3", "FA4"), flash_impl="FA4")


@pytest.mark.slow
def test_the_torch_import_child_reports_the_registry():
    result = run_imports((SDPA,))[SDPA]
    assert result.status is ImportStatus.OK and result.torch_flash_registry is True  # torch 2.13 here
    assert "FA4" in result.torch_flash_impls and result.torch_flash_impl is None  # a fresh process


def _gather(monkeypatch, site, tmp_path, sdpa: ImportResult, **options) -> Environment:
    if not any(site.glob("torch-*")):
        write_dist(site, "torch", "2.13.0")
    monkeypatch.setattr(imports, "check_imports", lambda todo, key, **kw: (
        {b: sdpa if b is SDPA else ImportResult(ImportStatus.OK) for b in todo}, False))
    return gather_environment(nvml=FakeNvml({"init_error": 12}), environ={}, path=[str(site)],
                              ledger_path=tmp_path / "l.json", cache_dir=tmp_path / "cache", **options)


def test_gather_takes_the_registry_from_the_torch_child(monkeypatch, site, tmp_path):
    child = ImportResult(ImportStatus.OK, torch_flash_registry=True, torch_flash_impls=("FA3", "FA4"),
                         torch_flash_impl="FA4")
    env = _gather(monkeypatch, site, tmp_path, child)
    assert (env.torch.flash_registry, env.torch.flash_impls, env.torch.flash_impl) == (True, ("FA3", "FA4"), "FA4")
    assert Environment.from_json(env.to_json()).torch == env.torch


def test_an_old_torch_says_no_registry_and_no_imports_says_nothing(monkeypatch, site, tmp_path):
    old = _gather(monkeypatch, site, tmp_path, ImportResult(ImportStatus.OK, torch_flash_registry=False))
    assert (old.torch.flash_registry, old.torch.flash_kernel) == (False, "FA2")
    unchecked = _gather(monkeypatch, site, tmp_path, ImportResult(ImportStatus.OK), check_imports=False)
    assert unchecked.torch.flash_registry is None


def _metrics(env: Environment) -> dict:
    registry = CollectorRegistry(auto_describe=False)

    class Static:
        def collect(self):
            return iter(environment_families(build_report(env)))
    registry.register(Static())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}


@pytest.mark.parametrize("torch, impl", [(FA4_ACTIVE, "FA4"), (TorchInfo(flash_registry=False), "FA2"),
                                         (TorchInfo(flash_registry=True, flash_impls=("FA4",)), "FA2")])
def test_the_flash_impl_info_metric(torch, impl):
    samples = _metrics(Environment(torch=torch))
    assert samples[("fa4doctor_torch_flash_impl_info", (("impl", impl),))] == 1.0
    assert sum(name == "fa4doctor_torch_flash_impl_info" for name, _ in samples) == 1


def test_no_flash_impl_sample_when_unchecked():
    assert not any(name == "fa4doctor_torch_flash_impl_info" for name, _ in _metrics(Environment()))


def test_check_text_names_the_flash_impl():
    out = io.StringIO()
    render_check(build_report(Environment(torch=FA4_ACTIVE)), Console(file=out, width=200))
    assert "SDPA flash kernel" in out.getvalue() and "FA4 (activated; registered: FA3, FA4" in out.getvalue()
    assert flash_text({"flash_registry": False}).startswith("FA2, torch's own")
    assert flash_text({}).startswith("not checked")
