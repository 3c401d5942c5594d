"""NVML scenarios replayed from checked-in fixtures: facts, and the findings they lead to."""

from __future__ import annotations

import json
import time

import pytest
from probe_fakes import NVML_FIXTURES

from fa4doctor.probe.gpus import GpuProbe, probe_gpus
from fa4doctor.probe.nvml import FakeNvml, NvmlFailure, PynvmlSource
from fa4doctor.probe.problems import driver_findings, gpu_findings
from fa4doctor.environment import TorchInfo


def scenario(name: str):
    return probe_gpus(FakeNvml.from_file(NVML_FIXTURES / f"{name}.json"))


def findings(gpus):
    return {f.code: f for gpu in gpus for f in gpu_findings(gpu)}


def test_every_fixture_is_a_known_scenario():
    names = {p.stem for p in NVML_FIXTURES.glob("*.json")}
    assert {"healthy_h100", "mig_enabled", "driver_lib_mismatch", "no_nvml_library", "throttled_clocks",
            "pcie_downtrained", "mixed_gpus"} <= names
    for path in NVML_FIXTURES.glob("*.json"):
        assert json.loads(path.read_text())["_scenario"]


def test_healthy_h100():
    driver, gpus = scenario("healthy_h100")
    assert (driver.nvml_status, driver.driver_version, driver.cuda_driver_version) == ("ok", "580.95.05", 13000)
    (gpu,) = gpus
    assert gpu.compute_capability == (9, 0) and gpu.nvml_index == 0
    assert gpu.uuid.startswith("GPU-") and gpu.memory_total_bytes == 85520809984
    assert (gpu.mig_mode_current, gpu.ecc_mode_current, gpu.persistence_mode) == (False, True, True)
    assert gpu.fabric_state == "not_supported" and gpu.compute_mode == "default"
    assert gpu.nvml_errors == () and not gpu.lost
    assert findings(gpus) == {}  # the idle clock reason (0x1) is not a problem
    assert driver_findings(driver, TorchInfo(version="2.13.0+cu130", cuda="13.0")) == []


def test_mig_enabled_lists_instances_and_a_pending_change():
    _, (gpu0, gpu1) = scenario("mig_enabled")
    assert gpu0.mig_mode_current is True and len(gpu0.mig_devices) == 2
    assert gpu0.mig_devices[0].uuid.startswith("MIG-") and gpu0.mig_devices[1].gpu_instance_id == 2
    assert (gpu1.mig_mode_current, gpu1.mig_mode_pending) == (False, True)
    found = findings((gpu0, gpu1))
    assert "mig_change_pending" in found and "-i 1 -r" in found["mig_change_pending"].fix


@pytest.mark.parametrize("name, status, severity", [("driver_lib_mismatch", "lib_rm_mismatch", "error"),
                                                    ("no_nvml_library", "library_not_found", "warning")])
def test_nvml_init_failures_are_facts(name, status, severity):
    driver, gpus = scenario(name)
    assert driver.nvml_status == status and gpus == ()
    (finding,) = driver_findings(driver, TorchInfo())
    assert finding.code == f"nvml_{status}" and finding.severity == severity
    if status == "lib_rm_mismatch":
        assert "reboot" in finding.fix


def test_throttled_clocks_flag_hardware_reasons_only():
    _, gpus = scenario("throttled_clocks")
    assert gpus[0].clock_event_reasons == 0x4C
    finding = findings(gpus)["clocks_throttled"]
    assert "hardware slowdown" in finding.message and "hardware thermal slowdown" in finding.message
    assert "power cap" not in finding.message  # SW power cap (0x4) is ordinary under load


def test_downtrained_pcie_link():
    _, gpus = scenario("pcie_downtrained")
    gpu = gpus[0]
    assert (gpu.pcie_gen_current, gpu.pcie_width_current, gpu.pcie_width_max) == (3, 8, 16)
    assert "x8 of x16" in findings(gpus)["pcie_downtrained"].message


def test_mixed_gpus_record_unsupported_queries_as_data():
    _, gpus = scenario("mixed_gpus")
    assert [g.compute_capability for g in gpus] == [(9, 0), (8, 0), (7, 5)]
    t4 = gpus[2]
    assert t4.remapped_rows_failed is None and t4.fabric_state is None
    assert dict(t4.nvml_errors)["nvmlDeviceGetRemappedRows"].startswith("Not Supported")


def test_lost_gpu_is_a_fact_not_a_crash():
    _, (ok, lost) = scenario("gpu_lost")
    assert not ok.lost and lost.lost and lost.nvml_index == 1
    assert findings((ok, lost))["gpu_lost"].severity == "error"


def test_driver_too_old_for_torch_cuda():
    driver, _ = scenario("old_driver")
    (finding,) = driver_findings(driver, TorchInfo(version="2.13.0+cu130", cuda="13.0"))
    assert finding.code == "driver_too_old" and ">= 580.0" in finding.fix and "CUDA 12.2" in finding.message


def test_nvml_call_failure_mid_device_is_recorded(tmp_path):
    data = json.loads((NVML_FIXTURES / "healthy_h100.json").read_text())
    data["devices"][0]["nvmlDeviceGetMigMode"] = {"error": 4, "message": "Insufficient Permissions"}
    _, (gpu,) = probe_gpus(FakeNvml(data))
    assert gpu.mig_mode_current is None
    assert ("nvmlDeviceGetMigMode", "Insufficient Permissions (NVML error 4)") in gpu.nvml_errors
    assert not gpu.lost


def test_gpu_lost_after_its_handle_was_taken():
    # NVML_ERROR_GPU_IS_LOST (15) from a device query, by its code whatever the message says
    data = json.loads((NVML_FIXTURES / "healthy_h100.json").read_text())
    data["devices"][0]["nvmlDeviceGetMemoryInfo"] = {"error": 15, "message": "Unknown Error"}
    _, (gpu,) = probe_gpus(FakeNvml(data))
    assert gpu.lost and gpu.name == "NVIDIA H100 80GB HBM3"


def test_production_source_without_a_driver_reports_instead_of_raising():
    # On this CPU machine libnvidia-ml is absent: the real bindings must give a fact, not an exception.
    source = PynvmlSource()
    try:
        source.init()
    except NvmlFailure as exc:
        driver, gpus = probe_gpus(PynvmlSource())
        assert driver.nvml_status != "ok" and gpus == () and exc.code > 0
    else:  # a GPU machine: the seam answers real calls
        source.shutdown()
        driver, _ = probe_gpus(PynvmlSource())
        assert driver.nvml_status == "ok" and driver.driver_version


class _SlowNvml(FakeNvml):
    """A driver that takes `seconds` in nvmlInit, off the GIL as a real driver call is."""

    def __init__(self, data, seconds):
        super().__init__(data)
        self.seconds = seconds

    def init(self):
        time.sleep(self.seconds)
        super().init()


def test_gpu_probe_runs_beside_other_work():
    data = json.loads((NVML_FIXTURES / "healthy_h100.json").read_text())
    started = time.perf_counter()
    probe = GpuProbe(_SlowNvml(data, 0.4))
    time.sleep(0.4)  # the caller's own work: imports, the metadata scan
    driver, (gpu,) = probe.result()
    assert time.perf_counter() - started < 0.7  # one after the other would take 0.8 s
    assert driver.nvml_status == "ok" and gpu.name == "NVIDIA H100 80GB HBM3" and probe.seconds >= 0.4
    assert (driver, (gpu,)) == probe_gpus(FakeNvml(data))


def test_gpu_probe_hands_an_unexpected_error_to_the_caller():
    class Broken(FakeNvml):
        def call(self, name, *args):
            raise RuntimeError("bindings changed under us")

    probe = GpuProbe(Broken({}))
    with pytest.raises(RuntimeError, match="bindings changed"):
        probe.result()


def test_gpu_probe_shuts_nvml_down_after_handing_over_the_facts():
    events = []

    class Recording(FakeNvml):
        def init(self):
            events.append("init")

        def shutdown(self):
            time.sleep(0.05)
            events.append("shutdown")

    probe = GpuProbe(Recording(json.loads((NVML_FIXTURES / "healthy_h100.json").read_text())))
    driver, gpus = probe.result()
    events.append("result")
    time.sleep(0.3)
    assert driver.nvml_status == "ok" and len(gpus) == 1 and events == ["init", "result", "shutdown"]
    failed = []

    class NoDriver(FakeNvml):
        def shutdown(self):
            failed.append("shutdown")

    GpuProbe(NoDriver({"init_error": 12})).result()
    time.sleep(0.1)
    assert failed == []  # nothing to shut down when init failed


def test_fabric_state_comes_from_the_versioned_query_only():
    """The unversioned nvmlDeviceGetGpuFabricInfo crashed `check` on an H200 (the driver writes a
    larger struct than pynvml's v1); only the versioned call, which states its size, is made."""
    import types

    import pynvml

    calls = []

    def versioned(handle, pointer):
        info = pointer._obj  # a ctypes.byref(): C gets a pointer, never the struct by value
        calls.append(type(info).__name__)
        info.state, info.status = 3, 0

    def unversioned(handle, info):  # pragma: no cover (the test fails if it is reached)
        raise AssertionError("the unversioned fabric query was called")

    fake = types.SimpleNamespace(NVMLError=pynvml.NVMLError, c_nvmlGpuFabricInfo_v2_t=pynvml.c_nvmlGpuFabricInfo_v2_t,
                                 nvmlDeviceGetGpuFabricInfoV=versioned, nvmlDeviceGetGpuFabricInfo=unversioned)
    source = PynvmlSource()
    source._nvml = fake
    assert source.call("nvmlDeviceGetGpuFabricInfo", "handle") == {"state": 3, "status": 0}
    assert calls == ["c_nvmlGpuFabricInfo_v2_t"]
    del fake.nvmlDeviceGetGpuFabricInfoV
    with pytest.raises(NvmlFailure) as failure:
        source.call("nvmlDeviceGetGpuFabricInfo", "handle")
    assert failure.value.code == 3
