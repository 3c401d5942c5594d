"""The whole probe on fakes: dist-info trees, replayed NVML, a ledger; then verdicts via `decide`."""

from __future__ import annotations

import json
import sys

from probe_fakes import NVML_FIXTURES, fa4, fa4_deps, write_dist

from fa4doctor.probe import native_build as native
from fa4doctor.names import BackendName
from fa4doctor.dispatch.vetting import fingerprint
from fa4doctor.environment import Environment, ImportStatus, LedgerEntry
from fa4doctor.probe import ledger
from fa4doctor.dispatch.default_specs import DEFAULT_SPECS
from fa4doctor.probe.gather import gather, gather_environment
from fa4doctor.probe.nvml import FakeNvml
from fa4doctor.dispatch.report import build_report
from ledger_helpers import flat_entry


def node(site, tmp_path, fixture="healthy_h100", fa4_version="4.0.0b36", **options):
    fa4(site, fa4_version)
    fa4_deps(site)
    write_dist(site, "torch", "2.13.0")
    options.setdefault("ledger_path", tmp_path / "ledger.json")
    options.setdefault("environ", {"XDG_CACHE_HOME": str(tmp_path / "cache")})
    return gather_environment(nvml=FakeNvml.from_file(NVML_FIXTURES / f"{fixture}.json"), check_imports=False,
                              path=[str(site)], **options)


def test_healthy_h100_with_fa4_b36_is_healthy(site, tmp_path):
    env = node(site, tmp_path)
    assert env.gpu(0).uuid == "GPU-5d3c0a8e-1f7b-4c1e-9a55-0e2d3b4c5d6e"
    assert env.backend(BackendName.FA4).version == "4.0.0b36"
    assert [f.code for f in env.findings] == ["jit_cache_disabled"]
    report = build_report(env)
    assert {v["chosen"] for v in report["verdicts"]} == {"fa4"}
    assert len(report["verdicts"]) == len(DEFAULT_SPECS)
    assert (report["healthy"], report["exit_code"]) == (True, 0)


def test_says_whether_attention_gets_its_compiled_hit_path(site, tmp_path):
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    node(site, tmp_path)
    (site / "torch").mkdir()
    (site / "torch" / "version.py").write_text("__version__ = '2.13.0'\ngit_version = 'abc'\n")

    def info(**environ):
        found = gather_environment(nvml=FakeNvml.from_file(NVML_FIXTURES / "healthy_h100.json"), check_imports=False,
                                   environ={**cache, **environ}, path=[str(site)], ledger_path=tmp_path / "l.json")
        return [f for f in found.findings if f.code == "native_not_built"]

    (finding,) = info()
    assert finding.severity == "info" and "fa4doctor native build" in finding.fix
    assert info(FA4DOCTOR_NATIVE="0") == []  # turned off on purpose
    built = native.artifact_path(cache, site / "torch")
    built.parent.mkdir(parents=True)
    built.write_bytes(b"")  # only its presence is read: check never loads torch
    assert info() == []
    (site / "torch" / "version.py").write_text("__version__ = '2.14.0'\n")  # another torch: not built for it
    assert len(info()) == 1


def test_snapshot_round_trips_through_json(site, tmp_path):
    env = node(site, tmp_path, fixture="mig_enabled")
    report = build_report(env)
    again = Environment.from_plain(json.loads(json.dumps(report)))
    assert again == env and again.gpus[0].mig_devices == env.gpus[0].mig_devices


def test_fa4_b3_is_too_old_and_the_check_says_what_to_do(site, tmp_path):
    report = build_report(node(site, tmp_path, fa4_version="4.0.0b3"))
    assert {v["chosen"] for v in report["verdicts"]} != {"fa4"}
    problem = next(p for p in report["problems"] if p["code"] == "fa4_not_eligible")
    assert "version_too_old" in problem["message"] and problem["fix"] == "pip install --pre -U flash-attn-4"
    assert report["exit_code"] == 3


def test_expect_another_backend(site, tmp_path):
    report = build_report(node(site, tmp_path), expect=BackendName.SDPA)
    assert report["exit_code"] == 3 and report["problems"][-1]["code"] == "sdpa_not_eligible"


def test_mixed_gpus_judge_each_visible_gpu(site, tmp_path):
    env = gather_environment(nvml=FakeNvml.from_file(NVML_FIXTURES / "mixed_gpus.json"), check_imports=False,
                             environ={"CUDA_VISIBLE_DEVICES": "2,0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"},
                             path=[str(site)], ledger_path=tmp_path / "none.json")
    report = build_report(env, DEFAULT_SPECS[:1])
    assert [(v["gpu"], v["gpu_name"]) for v in report["verdicts"]] == [(0, "Tesla T4"), (1, "NVIDIA H100 80GB HBM3")]
    assert env.cuda_visible_devices == "2,0"


def test_ledger_failure_turns_fa4_off_for_that_class(site, tmp_path):
    env = node(site, tmp_path)
    name, spec = DEFAULT_SPECS[0]
    entry = flat_entry(backend=BackendName.FA4, fingerprint=fingerprint(BackendName.FA4, env, env.gpu(0)),
                        case="hd128_causal", dtype="bf16", head_dim_qk=128, head_dim_v=128,
                        attn_mask_type="causal", window=False, direction="bwd", outcome="wrong_result")
    ledger.record([entry], tmp_path / "ledger.json")
    env = gather_environment(
        nvml=FakeNvml.from_file(NVML_FIXTURES / "healthy_h100.json"), check_imports=False, environ={},
        path=[str(site)], ledger_path=tmp_path / "ledger.json")
    assert env.ledger == (entry,)
    verdict = build_report(env, [(name, spec)])["verdicts"][0]
    assert verdict["chosen"] != "fa4"
    assert verdict["backends"][0]["reasons"][0]["code"] == "smoke_failed"


def test_default_ledger_comes_from_the_environment(site, tmp_path):
    (tmp_path / "broken.json").write_text("not json")
    env = gather_environment(nvml=FakeNvml({"init_error": 12}), check_imports=False, path=[str(site)],
                             environ={"FA4DOCTOR_LEDGER": str(tmp_path / "broken.json")})
    assert [f.code for f in env.findings if f.code == "ledger_unreadable"] == ["ledger_unreadable"]


def test_import_results_land_in_the_snapshot(site, tmp_path):
    fa4(site)
    mods = tmp_path / "mods"
    (mods / "flash_attn" / "cute").mkdir(parents=True)
    (mods / "flash_attn" / "cute" / "__init__.py").write_text("import cutlass_missing_here\n")
    gathered = gather(nvml=FakeNvml({"init_error": 12}), environ={"PYTHONPATH": str(mods)}, path=[str(site)],
                      cache_dir=tmp_path / "cache", ledger_path=tmp_path / "l.json",
                      import_modules={BackendName.FA4: ("flash_attn.cute",)})
    install = gathered.env.backend(BackendName.FA4)
    assert install.import_status is ImportStatus.MISSING_DEPENDENCY and "cutlass_missing_here" in install.import_error
    assert "import_missing_dependency" in [f.code for f in gathered.env.findings]
    assert gathered.imports_cached is False and dict(gathered.timings)["imports_seconds"] > 0


def test_nvml_runs_beside_the_package_scan_and_is_timed(site, tmp_path):
    import platform
    import socket

    from fa4doctor.probe.gpus import GpuProbe

    probe = GpuProbe(FakeNvml.from_file(NVML_FIXTURES / "healthy_h100.json"))  # started early, as check does
    gathered = gather(gpu_probe=probe, check_imports=False, environ={}, path=[str(site)],
                      ledger_path=tmp_path / "l.json")
    timings = dict(gathered.timings)
    assert {"packages_seconds", "nvml_seconds", "nvml_wait_seconds", "imports_seconds", "rest_seconds"} <= set(timings)
    assert gathered.env.gpu(0).name == "NVIDIA H100 80GB HBM3"
    assert (gathered.env.hostname, gathered.env.python) == (socket.gethostname(), platform.python_version())


def test_an_install_without_bytecode_that_python_may_not_write_is_reported(site, tmp_path):
    """Every rank would compile torch and FA4 from source at start (seconds each): check says so,
    and names what to compile. Where Python may write bytecode itself, the first import heals it."""
    for source in (site / "torch" / "__init__.py", site / "flash_attn" / "cute" / "interface.py"):
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("")
    (site / "flash_attn" / "__init__.py").write_text("")
    writable = node(site, tmp_path)
    assert "no_bytecode" not in [f.code for f in writable.findings]
    stuck = gather_environment(nvml=FakeNvml.from_file(NVML_FIXTURES / "healthy_h100.json"), check_imports=False,
                               environ={"PYTHONDONTWRITEBYTECODE": "1"}, path=[str(site)],
                               ledger_path=tmp_path / "ledger.json")
    (finding,) = [f for f in stuck.findings if f.code == "no_bytecode"]
    assert finding.severity == "warning"
    assert str(site / "torch" / "__init__.py") in finding.message and "interface.py" in finding.message
    assert finding.fix.startswith(f"python -m compileall -q -j 0 {site / 'flash_attn' / 'cute'} {site / 'torch'}")
    import py_compile  # compiled: nothing to report

    for source in (site / "torch" / "__init__.py", site / "flash_attn" / "cute" / "interface.py"):
        py_compile.compile(str(source), cfile=str(source.parent / "__pycache__" / f"{source.stem}.{sys.implementation.cache_tag}.pyc"))
    healed = gather_environment(nvml=FakeNvml.from_file(NVML_FIXTURES / "healthy_h100.json"), check_imports=False,
                                environ={"PYTHONDONTWRITEBYTECODE": "1"}, path=[str(site)],
                                ledger_path=tmp_path / "ledger.json")
    assert "no_bytecode" not in [f.code for f in healed.findings]


def test_the_install_fix_names_the_expected_backend(site, tmp_path):
    report = build_report(node(site, tmp_path), expect=BackendName.FA3)
    problem = next(p for p in report["problems"] if p["code"] == "fa3_not_eligible")
    assert "not_installed" in problem["message"] and problem["fix"] == "pip install flash-attn-3"


def test_torch_is_read_from_the_path_the_package_scan_searches(site, tmp_path):
    env = gather_environment(nvml=FakeNvml.from_file(NVML_FIXTURES / "healthy_h100.json"), check_imports=False,
                             environ={}, path=[str(site)], ledger_path=tmp_path / "ledger.json")
    assert env.torch.version is None  # not the torch of the interpreter running the test
    (site / "torch").mkdir()
    (site / "torch" / "version.py").write_text("__version__ = '2.11.0+cu130'\ncuda = '13.0'\n")
    env = gather_environment(nvml=FakeNvml.from_file(NVML_FIXTURES / "healthy_h100.json"), check_imports=False,
                             environ={}, path=[str(site)], ledger_path=tmp_path / "ledger.json")
    assert (env.torch.version, env.torch.cuda) == ("2.11.0+cu130", "13.0")


def test_fa4_knobs_are_recorded_and_reported(site, tmp_path):
    from fa4doctor.environment import Knob

    jit = str(tmp_path / "jit")
    environ = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "FLASH_ATTENTION_ARCH": "sm_90",
               "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED": "1", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": jit,
               "OMP_NUM_THREADS": "4"}
    env = node(site, tmp_path, environ=environ)
    assert env.knobs == (Knob("FLASH_ATTENTION_ARCH", "sm_90"),
                         Knob("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1", changes_kernels=False),
                         Knob("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", jit, changes_kernels=False))
    assert (env.jit_cache.enabled, env.jit_cache.directory) == (True, jit)  # the cache probe reads the same two
    knobs = [(f.severity, f.message.split(" is set")[0]) for f in env.findings if f.code == "fa4_knob_set"]
    assert knobs == [("warning", "FLASH_ATTENTION_ARCH='sm_90'"), ("info", "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED='1'"),
                     ("info", f"FLASH_ATTENTION_CUTE_DSL_CACHE_DIR={jit!r}")]
    assert Environment.from_json(env.to_json()) == env
    assert build_report(env)["healthy"] is True  # warnings and info only
    assert node(site / "again", tmp_path).knobs == ()
