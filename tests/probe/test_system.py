"""torch facts without importing torch, the CUDA ordinal <-> UUID <-> NVML index map, FA4's JIT cache."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from probe_fakes import NVML_FIXTURES

from fa4doctor.probe.gpus import probe_gpus
from fa4doctor.probe.nvml import FakeNvml
from fa4doctor.probe.problems import visibility_findings
from fa4doctor.probe.system import map_cuda_ordinals, read_jit_cache, read_torch_info, visible_entries


def test_torch_version_and_cuda_from_version_py(tmp_path):
    (tmp_path / "version.py").write_text("from typing import Optional\n__version__ = '2.9.1+cu130'\n"
                                         "debug = False\ncuda: Optional[str] = '13.0'\n")
    info = read_torch_info(tmp_path)
    assert (info.version, info.cuda, info.cxx11_abi) == ("2.9.1+cu130", "13.0", None)


def test_cpu_torch_has_no_cuda(tmp_path):
    (tmp_path / "version.py").write_text("__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\n")
    assert read_torch_info(tmp_path).cuda is None
    assert read_torch_info(tmp_path / "missing").version is None


def test_installed_torch_is_read_without_importing_it():
    code = ("import sys; from fa4doctor.probe.system import read_torch_info; info = read_torch_info(); "
            "print(info.version is not None, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


def mixed():
    return probe_gpus(FakeNvml.from_file(NVML_FIXTURES / "mixed_gpus.json"))[1]


def _ordinals(gpus):
    return [g.cuda_index for g in gpus]


@pytest.mark.parametrize("raw, expected", [(None, None), ("", []), ("0,2", ["0", "2"]), ("1,-1,0", ["1"]),
                                           (" GPU-ab , 3", ["GPU-ab", "3"])])
def test_visible_entries(raw, expected):
    assert visible_entries({} if raw is None else {"CUDA_VISIBLE_DEVICES": raw}) == expected


@pytest.mark.parametrize("visible, expected", [
    (None, [0, 1, 2]),
    ("2,0", [1, None, 0]),
    ("GPU-a100a100", [None, 0, None]),  # a unique UUID prefix
    ("1,9,0", [None, 0, None]),  # CUDA stops at the first invalid entry
    ("", [None, None, None]),
])
def test_cuda_ordinals_follow_cuda_visible_devices(visible, expected):
    environ = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    if visible is not None:
        environ["CUDA_VISIBLE_DEVICES"] = visible
    assert _ordinals(map_cuda_ordinals(mixed(), environ)) == expected


def test_mixed_models_without_pci_order_warn():
    gpus = map_cuda_ordinals(mixed(), {})
    codes = [f.code for f in visibility_findings(gpus, {})]
    assert codes == ["cuda_order_ambiguous"]
    assert visibility_findings(gpus, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}) == []


def test_nothing_visible_is_an_error():
    environ = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "GPU-nonexistent"}
    codes = [f.code for f in visibility_findings(map_cuda_ordinals(mixed(), environ), environ)]
    assert codes == ["no_visible_gpu"]


def test_mig_uuid_maps_to_its_parent_and_several_warn():
    gpus = probe_gpus(FakeNvml.from_file(NVML_FIXTURES / "mig_enabled.json"))[1]
    environ = {"CUDA_VISIBLE_DEVICES": "MIG-66666666-7777-4888-8999-aaaaaaaaaaaa"}
    assert _ordinals(map_cuda_ordinals(gpus, environ)) == [0, None]
    environ["CUDA_VISIBLE_DEVICES"] += ",MIG-11111111-2222-4333-8444-555555555555"
    assert "multiple_mig_visible" in [f.code for f in visibility_findings(gpus, environ)]


def test_jit_cache_defaults_off_under_tmp(monkeypatch, tmp_path):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    cache = read_jit_cache({"USER": "x"})
    assert cache.enabled is False and cache.directory.startswith(str(tmp_path))
    assert cache.directory.endswith("flash_attention_cute_dsl_cache")
    assert cache.writable is True and cache.size_bytes is None


def test_jit_cache_enabled_with_size(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "k1.o").write_bytes(b"x" * 100)
    (tmp_path / "k2.o").write_bytes(b"y" * 28)
    cache = read_jit_cache({"FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1",
                            "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": str(tmp_path)})
    assert (cache.enabled, cache.size_bytes, cache.entries, cache.writable) == (True, 128, 2, True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_jit_cache_not_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    cache = read_jit_cache({"FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": str(locked / "cache")})
    assert cache.writable is False


@pytest.mark.parametrize("version, severity", [("4.0.0b36", "error"), ("4.0.0b39", "error"),
                                               ("4.0.0b40", "warning"), ("4.0.0b99", "warning"),
                                               ("not-a-version", "error")])
def test_an_unwritable_cache_fails_fa4_before_b40_and_only_warns_from_it(version, severity):
    from fa4doctor.environment import JitCache
    from fa4doctor.probe.problems import jit_cache_findings

    found = jit_cache_findings(JitCache(enabled=True, directory="/ro", writable=False), version)
    assert [(f.code, f.severity) for f in found] == [("jit_cache_not_writable", severity)]
    assert jit_cache_findings(JitCache(enabled=True, directory="/ro", writable=False), None) == []
