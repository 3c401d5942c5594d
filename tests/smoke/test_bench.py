"""`run_bench`: the cases the rules allow, the timing loop (a fake clock), whole runs through real
children with fake kernels that take known times, the speed records, and the refusal without CUDA."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.reasons import BackendName
from fa4doctor.dispatch.selection import select
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.vetting import case_class, fingerprint
from fa4doctor.environment import Environment, GpuFacts, LedgerEntry, TorchInfo
from fa4doctor.probe.ledger import read_ledger
from fa4doctor.smoke.bench import BenchRefused, plan, run_bench, settings
from fa4doctor.smoke.timing import FakeClock, Timed, WallTimer, interleave, warm
from fa4doctor.smoke.zoo import allowed_pairs, named_shapes, zoo_shapes

from .conftest import FAKES, H100, fa4_env

BENCH_FAKES = FAKES.with_name("bench_fakes.py")
TINY = AttentionSpec(dtype="bf16", head_dim_qk=64, num_heads_q=2, seqlen_q=128, attn_mask_type="causal")
A100 = GpuFacts(name="NVIDIA A100-SXM4-80GB", compute_capability=(8, 0), cuda_index=0, uuid="GPU-a100")


def _labels(cases):
    return [(c["backend"], c["kernel"], c["spec"]["training"]) for c in cases]


def test_each_shape_runs_every_backend_the_rules_allow_and_each_sdpa_kernel():
    cases, refused = plan(fa4_env("4.0.0b40"), named_shapes([("tiny", TINY)]), H100, None, settings())
    assert _labels(cases) == [("fa4", None, True), ("sdpa", None, True), ("sdpa", "cudnn", True),
                              ("sdpa", "flash", True), ("sdpa", "efficient", True)]
    assert {(c["batch"], c["group"]) for c in cases} == {(128, 0)}  # 16k tokens of 128
    assert [(b, why.split(":")[0]) for _, b, why in refused] == [("fa3", "not_installed"), ("fa2", "not_installed")]


def test_a_backend_without_a_backward_on_the_gpu_is_timed_forward_only():
    cases, _ = plan(fa4_env("4.0.0b40", gpu=A100), named_shapes([("tiny", TINY)]), A100, [BackendName.FA4], settings())
    assert _labels(cases) == [("fa4", None, False)]  # FA4 trains on SM90 and newer


def test_the_zoo_covers_every_length_bucket_from_1k_to_16k():
    shapes = zoo_shapes(["llama-3-8b", "llama-3-8b-decode"], [1024, 16384])
    assert [(s.name, s.spec.seqlen_q, s.spec.seqlen_kv, s.batch) for s in shapes] == [
        ("llama-3-8b s1024", 1024, 1024, 16), ("llama-3-8b s16384", 16384, 16384, 1),
        ("llama-3-8b-decode s1024", 1, 1024, 128), ("llama-3-8b-decode s16384", 1, 16384, 8)]


def test_allowed_pairs_follow_the_mask_and_window():
    window = AttentionSpec(seqlen_q=8, attn_mask_type="causal", window_size=(3, 0))
    decode = AttentionSpec(seqlen_q=1, seqlen_kv=4096, attn_mask_type="causal_bottom_right")
    both = AttentionSpec(seqlen_q=8, window_size=(1, 1))
    assert (allowed_pairs(window), allowed_pairs(decode), allowed_pairs(both)) == (1 + 2 + 3 + 4 * 5, 4096, 8 * 3 - 2)


def test_rounds_interleave_and_report_the_median_with_a_fake_clock():
    clock, order = FakeClock(), []

    def kernel(name, ms):
        tick = clock.costing(ms)
        return lambda: (order.append(name), tick())

    cases = [Timed(0, "fwd", kernel("a", 2.0)), Timed(1, "fwd", kernel("b", 1.0)), Timed(2, "fwd", kernel("c", 3.0))]
    assert interleave(cases, rounds=3, timer=WallTimer(clock))
    assert "".join(order) == "abc" + "bca" + "cab"  # each round starts one case later
    assert [(c.summary()["median_ms"], c.summary()["rounds"]) for c in cases] == [(2.0, 3), (1.0, 3), (3.0, 3)]


def test_warm_up_sizes_a_block_to_a_millisecond_and_a_failure_leaves_the_rounds():
    clock = FakeClock()
    short = Timed(0, "fwd", clock.costing(0.1))
    assert warm(short, 3, WallTimer(clock), classify=None) and short.inner == 10  # 10 x 0.1 ms >= MIN_BLOCK_MS
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("No available kernel. Aborting execution.")

    bad = Timed(1, "fwd", flaky)
    fine = interleave([short, bad], rounds=4, timer=WallTimer(clock), classify=lambda e: ("refused", str(e), False))
    assert fine and bad.failure[0] == "refused" and len(short.samples) == 4 and len(bad.samples) == 1


def _vetted(env: Environment) -> Environment:
    """smoke's pass for TINY's class, forward and backward, for FA4 and SDPA."""
    return env.with_ledger(tuple(
        LedgerEntry(backend=b, fingerprint=fingerprint(b, env, H100), case="x", case_class=case_class(TINY),
                    direction=d, outcome="pass", gpu_uuid=H100.uuid)
        for b in (BackendName.FA4, BackendName.SDPA) for d in ("fwd", "bwd")))


def test_a_run_times_every_case_records_the_figures_and_fastest_then_runs_the_winner(tmp_path):
    env, ledger = fa4_env("4.0.0b40"), tmp_path / "ledger.json"
    report = run_bench(env, named_shapes([("tiny", TINY)]), warmup=1, rounds=3, ledger_path=ledger,
                       fake=f"{BENCH_FAKES}:efficient_declines")
    outcomes = {(r.label, r.direction): r.outcome for r in report.results}
    assert outcomes[("sdpa efficient", "fwd")] == "refused" and report.healthy  # declining is not failing
    assert {(w.backend, w.kernel) for w in report.winners()} == {("sdpa", "cudnn")}
    cudnn = next(r for r in report.results if r.kernel == "cudnn" and r.direction == "fwd_bwd")
    assert 1.0 <= cudnn.median_ms < 2.0 and cudnn.rounds == 3 and cudnn.tflops > 0
    assert report.ledger == str(ledger) and len(read_ledger(ledger).speed) == 8  # 4 cases timed x 2 directions
    measured = _vetted(env).with_ledger(_vetted(env).ledger, read_ledger(ledger).speed)
    decision = select(replace(TINY, seqlen_q=100, seqlen_kv=100, same_seqlens=None), measured, Policy(order="fastest"))
    assert (decision.chosen, decision.sdpa_kernel) == (BackendName.SDPA, "cudnn")
    plain = report.to_plain()
    assert plain["schema"] == "fa4doctor.bench" and plain["winners"][0]["kernel"] == "cudnn"


def test_a_crash_in_the_timed_rounds_is_blamed_on_its_case_and_a_fresh_child_times_the_rest():
    report = run_bench(fa4_env("4.0.0b40"), named_shapes([("tiny", TINY)]), warmup=1, rounds=2, record=False,
                       fake=f"{BENCH_FAKES}:fa4_crashes_timed")
    fa4 = {r.direction: (r.outcome, r.detail) for r in report.results if r.backend == "fa4"}
    assert fa4 == {"fwd": ("crash", "killed by SIGSEGV"), "fwd_bwd": ("skipped", "forward failed (crash)")}
    assert sum(r.outcome == "pass" for r in report.results) == 8 and not report.healthy


@pytest.mark.parametrize("env", [Environment(torch=TorchInfo("2.13.0+cpu")),
                                 replace(fa4_env(), torch=TorchInfo("2.13.0+cpu", None))])
def test_without_cuda_bench_refuses_and_says_why(env):
    with pytest.raises(BenchRefused, match=r"no CUDA GPU is visible here \(torch 2.13.0\+cpu without CUDA"):
        run_bench(env, named_shapes([("tiny", TINY)]))



def test_the_child_times_the_production_adapter_and_a_kernel_torch_will_not_run_is_refused_not_replaced():
    from fa4doctor.smoke.bench_job import run_job
    from fa4doctor.smoke.child import classify

    spec = replace(TINY, head_dim_qk=16, head_dim_v=16, seqlen_q=64, seqlen_kv=64, device="cpu").to_dict()
    cases = [{"id": i, "backend": "sdpa", "kernel": kernel, "name": "t", "spec": spec, "group": 0, "batch": 2,
              "timing": {"warmup": 1, "rounds": 2}} for i, kernel in enumerate((None, "flash", "cudnn"))]
    events = []
    assert run_job({"mode": "bench", "cases": cases}, None, "cpu", lambda e, **f: events.append((e, f)), classify) == 0
    results = {(f["id"], f["direction"]): f for e, f in events if e == "result"}
    assert results[(2, "fwd")]["outcome"] == "refused" and "No viable backend" in results[(2, "fwd")]["detail"]
    assert all(results[(i, d)]["outcome"] == "pass" and results[(i, d)]["rounds"] == 2
               for i in (0, 1) for d in ("fwd", "bwd"))
    assert (2, "bwd") not in results  # the parent settles the backward of a failed forward
