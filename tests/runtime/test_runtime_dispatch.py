"""The runtime call around the adapters: validation, the plan cache, policy, logging, counting,
and falling back when a backend's import fails at first use."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch

from fa4doctor.dispatch import BackendNotEligible, attention
from fa4doctor.runtime import dispatcher as runtime, local_env
from fa4doctor.runtime.inputs import prepare
from fa4doctor.dispatch.selection import select
from fa4doctor.environment import BackendInstall, Environment, GpuFacts, ImportStatus

from .reference import reference, rel_err


def _qkv(b=1, sq=4, sk=4, hq=2, hk=2, d=8, dv=8, dtype=torch.float32):
    return torch.randn(b, sq, hq, d, dtype=dtype), torch.randn(b, sk, hk, d, dtype=dtype), \
        torch.randn(b, sk, hk, dv, dtype=dtype)


def _calls(registry, backend="sdpa"):
    return registry.get_sample_value("fa4doctor_dispatch_calls_total", {"backend": backend})


BAD = [  # (what to change, argument the error must name)
    (lambda q, k, v: dict(k=k.double()), "k"),
    (lambda q, k, v: dict(v=v[..., :1, :]), "v"),
    (lambda q, k, v: dict(q=q[0]), "q"),
    (lambda q, k, v: dict(k=torch.randn(1, 4, 3, 8), v=torch.randn(1, 4, 3, 8)), "k"),
    (lambda q, k, v: dict(k=torch.randn(1, 4, 2, 4)), "k"),
    (lambda q, k, v: dict(q=q.to(torch.int32), k=k.int(), v=v.int()), "q"),
    (lambda q, k, v: dict(attn_mask_type="causal_top_left"), "attn_mask_type"),
    (lambda q, k, v: dict(attn_mask_type="arbitrary"), "attn_mask_type"),
    (lambda q, k, v: dict(window_size=(-2, 0)), "window_size"),
    (lambda q, k, v: dict(window_size=3), "window_size"),
    (lambda q, k, v: dict(qkv_format="sbhd"), "qkv_format"),
    (lambda q, k, v: dict(dropout_p=1.0), "dropout_p"),
    (lambda q, k, v: dict(softcap=-1.0), "softcap"),
    (lambda q, k, v: dict(softmax_scale=torch.tensor(0.1)), "softmax_scale"),
    (lambda q, k, v: dict(alibi_slopes=torch.ones(3)), "alibi_slopes"),
    (lambda q, k, v: dict(learnable_sink=torch.ones(2, 2)), "learnable_sink"),
    (lambda q, k, v: dict(deterministic="yes"), "deterministic"),
    (lambda q, k, v: dict(cu_seqlens_q=torch.tensor([0, 4], dtype=torch.int32)), "cu_seqlens_q"),
    (lambda q, k, v: dict(attn_mask_type="padding"), "cu_seqlens_q"),
]


@pytest.mark.parametrize("change,argument", BAD)
def test_bad_inputs_name_the_argument(change, argument):
    q, k, v = _qkv()
    args = {"q": q, "k": k, "v": v}
    args.update(change(q, k, v))
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        attention(**args)


THD_BAD = [
    (dict(cu_seqlens_q=torch.tensor([0, 2, 4], dtype=torch.int64)), "cu_seqlens_q", "int32"),
    (dict(cu_seqlens_q=torch.tensor([0, 3, 2, 4], dtype=torch.int32)), "cu_seqlens_q", "never decrease"),
    (dict(cu_seqlens_kv=torch.tensor([0, 2, 5], dtype=torch.int32)), "cu_seqlens_kv", "ends at 5"),
    (dict(cu_seqlens_kv=torch.tensor([0, 4], dtype=torch.int32)), "cu_seqlens_kv", "offsets"),
    (dict(max_seqlen_q=torch.tensor(2)), "max_seqlen_q", "Python int"),
    (dict(max_seqlen_kv=1), "max_seqlen_kv", "below the longest"),
    (dict(cu_seqlens_kv=None), "cu_seqlens_kv", "needs both"),
]


@pytest.mark.parametrize("change,argument,words", THD_BAD)
def test_bad_varlen_inputs(change, argument, words):
    q, k, v = (t[0] for t in _qkv())
    args = dict(qkv_format="thd", cu_seqlens_q=torch.tensor([0, 2, 4], dtype=torch.int32),
                cu_seqlens_kv=torch.tensor([0, 1, 4], dtype=torch.int32))
    args.update(change)
    with pytest.raises(ValueError, match=rf"^{argument}: .*{words}"):
        attention(q, k, v, **args)


def test_cached_plan_still_validates_what_changed():
    q, k, v = _qkv()
    attention(q, k, v)
    attention(q, k, v)
    with pytest.raises(ValueError, match="^k: dtype"):
        attention(q, k.bfloat16(), v)
    with pytest.raises(ValueError, match="^window_size"):
        attention(q, k, v, window_size=(-3, 0))
    with pytest.raises(ValueError, match="^max_seqlen_q"):
        attention(q, k, v, max_seqlen_q=4)
    cu = torch.tensor([0, 2, 4], dtype=torch.int32)
    attention(q[0], k[0], v[0], qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu)
    with pytest.raises(ValueError, match="^cu_seqlens_kv"):  # same shapes, new (bad) offsets
        attention(q[0], k[0], v[0], qkv_format="thd", cu_seqlens_q=cu,
                  cu_seqlens_kv=torch.tensor([0, 3, 2], dtype=torch.int32))


def test_list_window_takes_the_slow_path_and_is_right():
    q, k, v = _qkv(sq=5, sk=7)
    out = attention(q, k, v, window_size=[1, 1])
    assert rel_err(out, reference(q, k, v, window=(1, 1))) < 1e-5


def test_counters_and_fallback_reason_match_the_decision(fresh_runtime):
    q, k, v = _qkv()
    for _ in range(3):
        attention(q, k, v)
    attention(q, k, v, attn_mask_type="causal")
    spec = prepare(q, k, v).spec
    decision = select(spec, local_env.environment())
    assert decision.fell_back and decision.chosen.value == "sdpa"
    assert _calls(fresh_runtime) == 4
    labels = {"preferred": "fa4", "selected": "sdpa", "reason": decision.fallback_code.value}
    assert fresh_runtime.get_sample_value("fa4doctor_dispatch_fallbacks_total", labels) == 4


def test_a_recompute_runs_the_calls_plan_and_is_not_counted(fresh_runtime):
    q, k, v = (t.requires_grad_() for t in _qkv(sq=5, sk=7))
    out = attention(q, k, v, attn_mask_type="causal_bottom_right")
    again = runtime.recompute(q, k, v, attn_mask_type="causal_bottom_right")
    assert torch.equal(again, out) and again.grad_fn is not None
    assert len(runtime._classes) == 1 and _calls(fresh_runtime) == 1


def test_no_fallback_counted_when_sdpa_is_the_preferred_backend(fresh_runtime, monkeypatch):
    monkeypatch.setenv("FA4DOCTOR_DISABLE", "fa4,fa3,fa2")
    attention(*_qkv())
    assert _calls(fresh_runtime) == 1
    samples = [s for m in fresh_runtime.collect() if m.name == "fa4doctor_dispatch_fallbacks"
               for s in m.samples if s.name.endswith("_total")]
    assert samples == []


def test_policy_is_reread_when_its_variables_change(monkeypatch):
    q, k, v = _qkv()
    attention(q, k, v)
    monkeypatch.setenv("FA4DOCTOR_BACKEND", "fa4")
    with pytest.raises(BackendNotEligible, match=r"FA4DOCTOR_BACKEND=fa4 cannot run this call:\n  fa4: not_installed"):
        attention(q, k, v)
    monkeypatch.setenv("FA4DOCTOR_BACKEND", "fa6")
    with pytest.raises(ValueError, match="FA4DOCTOR_BACKEND: unknown backend 'fa6'"):
        attention(q, k, v)


def test_one_log_line_per_distinct_decision(caplog):
    caplog.set_level(logging.INFO, logger="fa4doctor.dispatch")
    q, k, v = _qkv()
    for _ in range(3):
        attention(q, k, v)
    attention(*_qkv(sq=6, sk=6))  # a new plan, the same decision: no new line
    lines = [r.getMessage() for r in caplog.records if r.name == "fa4doctor.dispatch"]
    assert len(lines) == 1
    assert "runs on sdpa" in lines[0] and "fa4 not used" in lines[0] and "not_installed" in lines[0]


def _h100_env(fa4_status=ImportStatus.NOT_CHECKED):
    gpu = GpuFacts(name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), cuda_index=0)
    return Environment(gpus=(gpu,), backends=(BackendInstall(local_env.BackendName.FA4, "flash-attn-4",
                                                             "4.0.0b36", fa4_status),))


def test_an_import_failure_at_first_use_falls_back_and_is_remembered(fakes, monkeypatch, fresh_runtime):
    importlib.import_module("flash_attn")  # the fake FA2 package; break its FA4 sub-module as a stale CuTe tree does

    monkeypatch.setattr(local_env, "_current", _h100_env())
    monkeypatch.setitem(__import__("sys").modules, "flash_attn.cute", None)
    q, k, v = _qkv(dtype=torch.bfloat16)
    prepared = prepare(q, k, v)
    prepared = type(prepared)(type(prepared.spec).from_dict({**prepared.spec.to_dict(), "device": "cuda"}),
                              prepared.scale, 0, None)
    plan = runtime._new_plan(prepared)
    assert plan.decision.chosen.value == "sdpa"
    fa4 = dict(plan.decision.reasons)[local_env.BackendName.FA4]
    assert fa4[0].code.value == "import_failed" and "flash_attn.cute" in fa4[0].detail
    assert local_env.environment().backend(local_env.BackendName.FA4).import_status is ImportStatus.ERROR
    out = plan.run(q, k, v)
    assert rel_err(out, reference(q, k, v)) < 2e-2


def test_fa4_chosen_on_a_gpu_environment_runs_the_fa4_adapter(fakes, monkeypatch):
    monkeypatch.setattr(local_env, "_current", _h100_env())
    q, k, v = _qkv(sq=4, sk=8, dtype=torch.bfloat16)
    prepared = prepare(q, k, v, attn_mask_type="causal_bottom_right")
    spec = type(prepared.spec).from_dict({**prepared.spec.to_dict(), "device": "cuda"})
    plan = runtime._new_plan(type(prepared)(spec, prepared.scale, 0, None))
    assert plan.decision.chosen.value == "fa4" and not plan.decision.fell_back
    out = plan.run(q, k, v)
    assert fakes[-1]["backend"] == "fa4" and fakes[-1]["kwargs"]["causal"] is True
    assert rel_err(out, reference(q, k, v, mask="causal_bottom_right")) < 2e-2


def _packed(lengths):
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    q, k, v = (torch.randn(offsets[-1], 2, 8) for _ in range(3))
    return q, k, v, torch.tensor(offsets, dtype=torch.int32)


def _varlen(q, k, v, cu):
    return attention(q, k, v, qkv_format="thd", attn_mask_type="padding_causal", cu_seqlens_q=cu, cu_seqlens_kv=cu)


def test_offsets_are_read_once_per_tensor_and_again_after_an_in_place_write(monkeypatch):
    """A step passes every layer the same cu_seqlens: its offsets are copied to the host once. An
    in-place write (the version counter) or another tensor at the same id is read afresh."""
    from fa4doctor.runtime import inputs

    reads = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.numel()) or real(t))
    q, k, v, cu = _packed([3, 5])
    first = _varlen(q, k, v, cu)
    assert torch.equal(_varlen(q, k, v, cu), first) and len(reads) == 1
    cu[1] = 4  # lengths 4 and 4 now: the same tokens, split elsewhere
    moved = _varlen(q, k, v, cu)
    assert len(reads) == 2
    want = reference(q, k, v, mask="padding_causal", cu_q=cu, cu_kv=cu, qkv_format="thd")
    assert rel_err(moved, want) < 1e-5 and not torch.allclose(moved, first)
    reads.clear()
    del cu
    other = torch.tensor([0, 8], dtype=torch.int32)  # may take the freed id: never read as the old one
    _varlen(q, k, v, other)
    assert len(reads) == 1 and len(inputs._READ_OFFSETS) <= 16
