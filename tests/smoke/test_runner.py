"""The runner against fake backends that misbehave on purpose, and SDPA for real on the CPU.

Each fake stands in for `call_backend` inside the smoke children (`FA4DOCTOR_SMOKE_FAKE`), so the
child processes, timeouts, crashes and classification are the production ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fa4doctor.names import BackendName
from fa4doctor.dispatch.spec import AttentionSpec, SpecError
from fa4doctor.environment import Environment
from fa4doctor.probe.ledger import read_ledger
from fa4doctor.smoke.runner import ProgressEvent, _child_environ, _child_spec, run_smoke, select_gpus

from .conftest import H100, fa4_env, fake

FA4 = BackendName.FA4
ROOT = Path(__file__).resolve().parents[2]


def _run(env, name, **kwargs):
    kwargs.setdefault("record", False)
    kwargs.setdefault("map_failures", False)  # test_a_failure_maps_its_extent runs it
    return run_smoke(env, backends=[FA4], device="cpu", fake=fake(name), jobs=1, **kwargs)


def _by(report):
    return {(c.case.split(":", 1)[1], c.direction): c for c in report.cases}


def _python(script: str, timeout: float) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter at the repository root (so `tests.smoke.conftest` imports)."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_a_correct_backend_passes_forward_and_backward(h100_env):
    report = _run(h100_env, "correct")
    assert [(c.direction, c.outcome) for c in report.cases] == [("fwd", "pass"), ("bwd", "pass")]
    fwd, bwd = report.cases
    assert set(bwd.errors) == {"dq", "dk", "dv"} and all(bwd.errors[t] <= bwd.tolerances[t] for t in bwd.errors)
    assert fwd.gpu_uuid == H100.uuid and fwd.compile_seconds is not None and fwd.run_seconds is not None
    assert report.healthy


EXPECTED = {8: ("refused", "AssertionError: inputs must be float16"),
            16: ("compile_failed", "CompilationError: ptxas"),
            24: ("oom", "out of memory"),
            32: ("wrong_result", "out max error"),
            40: ("wrong_result", "out max error nan"),
            48: ("crash", "illegal memory access"),
            56: ("crash", "killed by SIGSEGV"),
            72: ("timeout", "no result after 10 s")}


@pytest.mark.slow
def test_every_failure_kind_is_classified_and_the_run_goes_on(h100_env):
    """One run, one misbehaviour per head dim (fakes.BY_HEAD_DIM): crashes and the hang each cost
    one case and a fresh child, never the run."""
    dims = [(d, d) for d in (8, 16, 24, 32, 40, 48, 56, 64, 72, 80)]
    by = _by(_run(h100_env, "by_head_dim", head_dims=dims, timeout=10))
    for dim, (outcome, detail) in EXPECTED.items():
        fwd, bwd = by[(f"bf16-d{dim}-h4-s256-causal", "fwd")], by[(f"bf16-d{dim}-h4-s256-causal", "bwd")]
        assert (fwd.outcome, bwd.outcome) == (outcome, "skipped"), dim
        assert detail in fwd.detail, (dim, fwd.detail)
    fwd, bwd = by[("bf16-d64-h4-s256-causal", "fwd")], by[("bf16-d64-h4-s256-causal", "bwd")]
    assert fwd.outcome == "pass" and bwd.outcome == "wrong_result"  # wrong gradients, named
    assert bwd.detail.startswith("dq max error") and "dk" not in bwd.detail
    assert bwd.errors["dq"] > bwd.tolerances["dq"] and bwd.errors["dk"] <= bwd.tolerances["dk"]
    for name in ("bf16-d80-h4-s256-causal", "bf16-d128-h4-s256-causal"):  # after every restart
        assert (by[(name, "fwd")].outcome, by[(name, "bwd")].outcome) == ("pass", "pass")


def test_progress_json_and_ledger_of_a_wrong_gradient(h100_env, tmp_path):
    events, path = [], tmp_path / "ledger.json"
    report = _run(h100_env, "wrong_dq", progress=events.append, record=True, ledger_path=path)
    assert [(e.phase, e.done, e.total) for e in events] == [("run", 1, 2), ("run", 2, 2)]
    assert isinstance(events[0], ProgressEvent) and "wrong_result" in str(events[1])
    plain = json.loads(json.dumps(report.to_plain()))
    assert plain["schema"] == "fa4doctor.smoke" and plain["schema_version"] == 1
    assert set(plain["phases"]) == {"import_seconds", "compile_seconds", "run_seconds", "total_seconds"}
    case = plain["cases"][1]
    assert {"backend", "gpu", "gpu_uuid", "case", "spec", "direction", "outcome", "detail", "errors",
            "tolerances", "compile_seconds", "run_seconds"} <= set(case)
    assert case["spec"]["head_dim_qk"] == 128 and set(case["errors"]) == {"out", "dq", "dk", "dv"}
    assert case["outcome"] == "wrong_result" and case["errors"]["dq"] > case["tolerances"]["dq"]
    assert report.ledger == str(path)
    entries = read_ledger(path).entries
    assert [(e.direction, e.outcome) for e in entries] == [("fwd", "pass"), ("bwd", "wrong_result")]
    assert entries[1].gpu_uuid == H100.uuid and "dq max error" in entries[1].detail


@pytest.mark.slow
def test_sdpa_for_real_on_the_cpu():
    """The production adapter (call_backend) on CPU tensors, standard level: every case passes."""
    pytest.importorskip("fa4doctor.runtime.dispatcher")
    report = run_smoke(Environment(), level="standard", device="cpu", record=False)
    assert report.cases and {c.backend for c in report.cases} == {"sdpa"}
    assert [c for c in report.cases if c.outcome != "pass"] == []
    assert len(report.cases) == 35  # 16 training cases forward and backward, 3 decode forward


def test_no_gpu_and_cuda_runs_nothing():
    report = run_smoke(Environment(), record=False)
    assert report.cases == () and not report.healthy


def test_the_parent_never_imports_torch():
    """Only the children touch torch and the GPU; the parent process stays light."""
    script = (
        "import sys, json\n"
        "from tests.smoke.conftest import fa4_env, fake\n"
        "from fa4doctor.smoke.runner import run_smoke\n"
        "r = run_smoke(fa4_env(), backends=['fa4'], device='cpu', fake=fake('correct'), record=False)\n"
        "print(json.dumps([r.healthy, 'torch' in sys.modules]))\n")
    done = _python(script, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "[true, false]", done.stderr


def test_children_are_pinned_to_their_gpu_by_uuid_and_share_fa4s_cache():
    env = _child_environ({"CUDA_VISIBLE_DEVICES": "4,6", "HOME": "/h"}, fake=None)
    assert env["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] == "1"
    assert env["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == "/h/.cache/fa4doctor/cute-dsl-cache"
    assert _child_spec(env, H100, "cuda", {"fa4"}, 10).env["CUDA_VISIBLE_DEVICES"] == H100.uuid
    # No UUID (NVML failed): CUDA index 1 is the parent's second visible device, not physical 1.
    nameless = replace(H100, uuid=None, cuda_index=1)
    assert _child_spec(env, nameless, "cuda", {"fa4"}, 10).env["CUDA_VISIBLE_DEVICES"] == "6"
    two = Environment(gpus=(H100, replace(H100, uuid="GPU-b", cuda_index=1), replace(H100, uuid="GPU-c", cuda_index=None)))
    assert [g.uuid for g in select_gpus(two, None)] == [H100.uuid, "GPU-b"]  # GPU-c is hidden
    assert [g.uuid for g in select_gpus(two, ["GPU-b", 0])] == ["GPU-b", H100.uuid]
    assert [g.uuid for g in select_gpus(two, ["0", H100.uuid])] == [H100.uuid]  # one GPU, named twice
    with pytest.raises(SpecError, match="gpu: no visible GPU 'GPU-c'"):
        select_gpus(two, ["GPU-c"])
    user = _child_environ({"FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": "/shared/cache"}, fake=None)
    assert user["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == "/shared/cache"


@pytest.mark.slow
def test_compile_phase_then_run_phase_on_two_gpus_one_of_them_faulty(tmp_path, monkeypatch):
    """FA4's cases first run once in `jobs` parallel children that share the CuTe DSL disk cache
    (one per GPU here), then one child per GPU runs them all. A wrong result in the compile
    phase is final for the GPU it happened on only: the other GPU runs that case itself."""
    log, cache = tmp_path / "calls.log", str(tmp_path / "cache")
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", cache)
    bad = replace(H100, uuid="GPU-bad", cuda_index=1, nvml_index=1)
    env = replace(fa4_env(), gpus=(H100, bad))
    dims = [(d, d) for d in (32, 64, 96, 160, 256)]
    report = run_smoke(env, backends=["FA4"], device="cpu", fake=fake("wrong_on_bad_gpu"), jobs=2,
                       head_dims=dims, record=False, map_failures=False)
    assert report.phases.compile_seconds > 0
    rows = [line.split() for line in log.read_text().splitlines()]
    assert {(enabled, directory) for _, _, enabled, directory, _ in rows} == {("1", cache)}
    processes: dict[str, tuple[str, set]] = {}
    for pid, dim, _, _, gpu in rows:
        processes.setdefault(pid, (gpu, set()))[1].add(int(dim))
    every = {32, 64, 96, 128, 160, 256}
    assert len(processes) == 4  # a compile child and a run child per GPU
    good = sorted((dims for gpu, dims in processes.values() if gpu == H100.uuid), key=len)
    on_bad = {frozenset(dims) for gpu, dims in processes.values() if gpu == "GPU-bad"}
    # The good GPU compiled half and ran all six; the bad one compiled the other half (failing
    # them: final there) and ran only the half that the good GPU had compiled and passed.
    assert good[1] == every and on_bad == {frozenset(good[0]), frozenset(every - good[0])}
    outcomes = {(c.gpu_uuid, c.direction, c.outcome) for c in report.cases}
    assert outcomes == {(H100.uuid, "fwd", "pass"), (H100.uuid, "bwd", "pass"),
                        ("GPU-bad", "fwd", "pass"), ("GPU-bad", "bwd", "wrong_result")}
    assert len(report.cases) == 24
    failed = {e.gpu_uuid for e in report.ledger_entries if e.failed}
    assert failed == {"GPU-bad"}


@pytest.mark.slow
def test_ctrl_c_stops_every_child():
    """Children run in their own sessions (so a timeout can kill their whole group); an
    interrupted run must therefore stop them itself."""
    script = (
        "import os, signal, subprocess, threading, time\n"
        "from tests.smoke.conftest import fa4_env, fake\n"
        "from fa4doctor.smoke.runner import run_smoke\n"
        "threading.Timer(4.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
        "try:\n"
        "    run_smoke(fa4_env(), backends=['fa4'], device='cpu', fake=fake('hang'), record=False, timeout=300)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
        "time.sleep(0.5)\n"
        "left = subprocess.run(['pgrep', '-P', str(os.getpid())], capture_output=True, text=True).stdout.split()\n"
        "print('left', len(left))\n")
    done = _python(script, timeout=120)
    assert done.stdout.split() == ["interrupted", "left", "0"], done.stderr


@pytest.mark.slow
def test_each_backend_of_a_gpu_runs_in_its_own_child(h100_env, tmp_path, monkeypatch):
    """SDPA needs only torch, so it must not wait behind FA4's import: one child per GPU and
    backend, each preloading only its own, while the report still names the GPU once and keeps
    the plan's order."""
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    report = run_smoke(h100_env, backends=[FA4, BackendName.SDPA], device="cpu", fake=fake("note_process"),
                       jobs=1, record=False)
    rows = {tuple(line.split()) for line in log.read_text().splitlines()}
    by_pid: dict[str, set] = {}
    for pid, backend, preload in rows:
        by_pid.setdefault(pid, set()).add((backend, preload))
    assert sorted(by_pid.values(), key=str) == [{("fa4", "fa4")}, {("sdpa", "sdpa")}]
    assert [(c.backend, c.direction, c.outcome) for c in report.cases] == [
        ("fa4", "fwd", "pass"), ("fa4", "bwd", "pass"), ("sdpa", "fwd", "pass"), ("sdpa", "bwd", "pass")]
    assert [g.uuid for g in report.gpus] == [H100.uuid]
    assert {(e.backend, e.direction) for e in report.ledger_entries} == {
        ("fa4", "fwd"), ("fa4", "bwd"), ("sdpa", "fwd"), ("sdpa", "bwd")}


def test_a_failure_maps_its_extent_and_the_ledger_refuses_only_what_it_reaches(h100_env, tmp_path):
    """A wrong dq at head dim 96 makes smoke run that head dim's neighbours (other dtype, masks,
    windows, GQA); they fail too and are recorded, while head dim 128 stays clean."""
    from fa4doctor.dispatch.selection import decide
    from fa4doctor.probe.ledger import read_ledger

    path = tmp_path / "ledger.json"
    report = _run(h100_env, "bwd_wrong_d96", head_dims=[(96, 96)], record=True, ledger_path=path,
                  map_failures=True)
    failed_96 = {c.case for c in report.cases if c.direction == "bwd" and c.outcome != "pass"}
    assert {"fa4:fp16-d96-h2-s128-causal", "fa4:bf16-d96-h2-s128-no_mask",
            "fa4:bf16-d96-h8/2-s128-causal", "fa4:bf16-d96-h2-s128-causal-w64,0"} <= failed_96
    assert all(c.outcome == "pass" for c in report.cases if c.spec["head_dim_qk"] != 96)
    env = h100_env.with_ledger(read_ledger(path).entries)
    reached = AttentionSpec(dtype="fp16", head_dim_qk=96, num_heads_q=16, num_heads_kv=4, seqlen_q=2048,
                            attn_mask_type="causal_bottom_right", window_size=(128, 0))
    assert decide(reached, env).chosen is not BackendName.FA4
    assert decide(replace(reached, head_dim_qk=128, head_dim_v=128), env).chosen is BackendName.FA4
