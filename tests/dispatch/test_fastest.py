"""`FA4DOCTOR_POLICY=fastest` over recorded ledgers: the fastest vetted backend wins, an unvetted
or failed faster one never does, nothing measured keeps the fixed order, training reads
forward+backward figures and inference forward ones, ties go to the order; and the shape classes
the records are kept by."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.reasons import BackendName, ReasonCode
from fa4doctor.dispatch.selection import select
from fa4doctor.dispatch.spec import AttentionSpec
from fa4doctor.dispatch.speed import FWD, FWD_BWD, RESTRICT_MS, seqlen_bucket, shape_class
from fa4doctor.dispatch.vetting import case_class, fingerprint
from fa4doctor.environment import DriverInfo, GpuFacts, LedgerEntry, SpeedEntry, TorchInfo

from .dispatch_envs import make_env

B = BackendName
FA4, SDPA = B.FA4, B.SDPA
NODE = replace(make_env((9, 0), fa4="4.0.0b40"), driver=DriverInfo(nvml_status="ok", driver_version="580.159.04"))
H100 = NODE.gpus[0]
TRAIN = AttentionSpec(head_dim_qk=64, num_heads_q=12, seqlen_q=4096, attn_mask_type="causal")  # GPT-2 style
INFER = replace(TRAIN, training=False)
FASTEST = Policy(order="fastest")


def vets(backend: BackendName, spec: AttentionSpec = TRAIN, outcome: str = "pass") -> tuple[LedgerEntry, ...]:
    """Smoke's evidence for `spec`'s class in every direction a training call runs."""
    return tuple(LedgerEntry(backend=backend, fingerprint=fingerprint(backend, NODE, H100), case=f"{backend.value}:x",
                             case_class=case_class(spec), direction=d, outcome=outcome, gpu_uuid=H100.uuid)
                 for d in ("fwd", "bwd"))


def timed(backend: BackendName, ms: float, direction: str = FWD_BWD, kernel: str | None = None,
          spec: AttentionSpec = TRAIN, gpu: GpuFacts = H100, env=NODE) -> SpeedEntry:
    return SpeedEntry(backend=backend, fingerprint=fingerprint(backend, env, gpu), case="gpt-2 s4096",
                      shape_class=shape_class(spec), direction=direction, median_ms=ms, tflops=100.0 / ms,
                      kernel=kernel, rounds=10, gpu_uuid=gpu.uuid)


def node(entries=(), speed=()):
    return NODE.with_ledger(tuple(entries), tuple(speed))


BOTH = vets(FA4) + vets(SDPA)


def test_the_fastest_vetted_backend_wins_and_is_not_a_fallback():
    env = node(BOTH, [timed(FA4, 2.0), timed(SDPA, 1.5), timed(SDPA, 1.2, kernel="cudnn")])
    decision = select(TRAIN, env, FASTEST)
    assert (decision.chosen, decision.sdpa_kernel, decision.outcome) == (SDPA, "cudnn", "outpaced")
    assert not decision.fell_back and decision.fallback_code is None and decision.summary is None
    assert [(m.label, m.median_ms, m.vetted) for m in decision.measured] == [
        ("fa4", 2.0, True), ("sdpa (torch's choice)", 1.5, True), ("sdpa cudnn", 1.2, True)]


@pytest.mark.parametrize("fa4_evidence", ["none", "bwd only", "wrong_result"])
def test_a_faster_backend_this_node_has_not_proven_never_wins(fa4_evidence):
    fa4 = {"none": (), "bwd only": vets(FA4)[1:], "wrong_result": vets(FA4, outcome="wrong_result")}[fa4_evidence]
    ledger = vets(SDPA) + fa4
    decision = select(TRAIN, node(ledger, [timed(FA4, 1.0), timed(SDPA, 2.0)]), FASTEST)
    assert decision.chosen is SDPA
    if fa4_evidence == "wrong_result":  # refused outright: a fallback, with its reason
        assert decision.fell_back and decision.fallback_code is ReasonCode.SMOKE_FAILED
    else:  # eligible but unproven: shown, never chosen
        assert decision.outcome == "outpaced" and [m.vetted for m in decision.measured] == [False, True]


@pytest.mark.parametrize("why", ["no records", "another class", "another fingerprint", "no vetted backend"])
def test_nothing_measured_and_vetted_keeps_the_fixed_order(why):
    speed = {"no records": [],
             "another class": [timed(SDPA, 0.1, spec=replace(TRAIN, head_dim_qk=128))],
             "another fingerprint": [timed(SDPA, 0.1, env=replace(NODE, torch=TorchInfo("2.10.0+cu130", "13.0")))],
             "no vetted backend": [timed(SDPA, 0.1)]}[why]
    decision = select(TRAIN, node(() if why == "no vetted backend" else BOTH, speed), FASTEST)
    assert (decision.chosen, decision.outcome, decision.sdpa_kernel) == (FA4, "preferred", None)


def test_training_reads_forward_backward_figures_and_inference_forward_ones():
    # cuDNN's forward leads, FA4's backward more than makes up for it (the shape of the H100's d128 8k figures)
    speed = [timed(FA4, 2.0, FWD), timed(SDPA, 1.0, FWD), timed(FA4, 5.0), timed(SDPA, 6.0)]
    env = node(BOTH, speed)
    assert select(TRAIN, env, FASTEST).chosen is FA4
    assert select(INFER, env, FASTEST).chosen is SDPA


@pytest.mark.parametrize("fa4_ms,chosen", [(1.01, FA4), (1.0, FA4), (1.05, SDPA)])
def test_ties_go_to_the_fixed_order(fa4_ms, chosen):
    assert select(TRAIN, node(BOTH, [timed(FA4, fa4_ms), timed(SDPA, 1.0)]), FASTEST).chosen is chosen


def test_priority_never_reads_the_speed_records():
    decision = select(TRAIN, node(BOTH, [timed(FA4, 9.0), timed(SDPA, 1.0)]))
    assert (decision.chosen, decision.order, decision.measured) == (FA4, "priority", ())


@pytest.mark.parametrize("own_ms,kernel", [(1.0 + RESTRICT_MS / 2, None), (1.2, "cudnn")])
def test_sdpa_is_kept_to_its_fastest_kernel_only_where_that_pays_for_the_restriction(own_ms, kernel):
    speed = [timed(FA4, 3.0), timed(SDPA, own_ms), timed(SDPA, 1.0, kernel="cudnn"), timed(SDPA, 2.0, kernel="flash")]
    decision = select(TRAIN, node(BOTH, speed), FASTEST)
    assert (decision.chosen, decision.sdpa_kernel) == (SDPA, kernel)


def test_a_kernel_the_adapter_excludes_is_never_the_one_kept():
    # torch's flash kernel is FA4 here and FA4 is disabled: flash is excluded, and torch's own choice
    # (measured with flash allowed) no longer says what SDPA runs
    env = replace(node(BOTH, [timed(SDPA, 0.4), timed(SDPA, 0.5, kernel="flash"), timed(SDPA, 1.0, kernel="cudnn")]),
                  torch=TorchInfo("2.11.0+cu130", "13.0", flash_registry=True, flash_impls=("FA4",), flash_impl="FA4"))
    env = env.with_ledger(vets(SDPA), [replace(s, fingerprint=fingerprint(SDPA, env, H100)) for s in env.speed])
    decision = select(TRAIN, env, Policy(disabled=frozenset({FA4}), order="fastest"))
    assert [k for k, _ in decision.sdpa_excluded] == ["flash"]
    assert (decision.chosen, decision.sdpa_kernel) == (SDPA, "cudnn")


def test_a_forced_backend_is_not_ranked_and_strict_allows_an_outpaced_preferred_one():
    env = node(BOTH, [timed(FA4, 3.0), timed(SDPA, 1.0)])
    assert select(TRAIN, env, Policy(force=FA4, order="fastest")).chosen is FA4
    assert select(TRAIN, env, Policy(strict=True, order="fastest")).chosen is SDPA  # no FallbackRefused


def test_several_gpus_count_by_the_median_of_their_figures():
    other = replace(H100, cuda_index=1, nvml_index=1, uuid="GPU-1")
    env = replace(node(BOTH), gpus=(H100, other)).with_ledger(BOTH, [
        timed(FA4, 1.5), timed(SDPA, 1.0), timed(SDPA, 3.0, gpu=other),
        timed(SDPA, 2.2, gpu=replace(other, uuid="GPU-2"))])
    decision = select(TRAIN, env, FASTEST)
    assert decision.chosen is FA4 and [(m.median_ms, m.records) for m in decision.measured][1] == (2.2, 3)


@pytest.mark.parametrize("n,bucket", [(0, 0), (1, 1), (2, 2), (3, 4), (1024, 1024), (1448, 1024), (1449, 2048),
                                      (3000, 4096), (5792, 4096), (5793, 8192), (16384, 16384), (23170, 16384),
                                      (23171, 32768)])
def test_lengths_are_bucketed_to_the_nearest_power_of_two_in_ratio(n, bucket):
    assert seqlen_bucket(n) == bucket


def test_a_shape_class_is_the_case_class_the_length_buckets_and_the_features():
    at = lambda **kw: shape_class(replace(TRAIN, same_seqlens=None, **kw))  # noqa: E731
    assert at(seqlen_q=3000, seqlen_kv=3000) == at(seqlen_q=5792, seqlen_kv=5792) == shape_class(TRAIN)
    assert at(seqlen_q=6000, seqlen_kv=6000) != shape_class(TRAIN)
    assert at(seqlen_kv=1024).seqlen_kv == 1024 and at(seqlen_q=1, seqlen_kv=4096).case_class.decode
    assert at(softcap=30.0).features == ("softcap",) and at(deterministic=True).features == ("deterministic",)
    assert shape_class(replace(TRAIN, training=False)) == shape_class(TRAIN)  # the direction is the record's


def test_a_bucket_s_figures_decide_every_length_in_it():
    env = node(BOTH, [timed(FA4, 2.0), timed(SDPA, 1.0)])  # measured at 4096
    at = lambda n: replace(TRAIN, seqlen_q=n, seqlen_kv=n, same_seqlens=None)  # noqa: E731
    assert select(at(3000), env, FASTEST).chosen is SDPA
    assert select(at(8192), env, FASTEST).chosen is FA4  # not measured: the fixed order
