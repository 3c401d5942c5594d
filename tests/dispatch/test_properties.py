"""Properties over random valid specs and environments (hypothesis)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fa4doctor.dispatch.reasons import BackendName, ReasonCode, decision_to_plain
from fa4doctor.dispatch.selection import cache_clear, decide
from fa4doctor.dispatch.spec import AttentionSpec, Dtype, MaskType, QkvFormat, SpecError
from fa4doctor.environment import ImportStatus

from .dispatch_envs import ALL_CCS, make_env

pytestmark = pytest.mark.slow  # a few seconds: hundreds of random cases

VERSIONS = {
    "fa4": [None, "4.0.0b3", "4.0.0b5", "4.0.0b8", "4.0.0b11", "4.0.0b24", "4.0.0b26", "4.0.0b36", "3.0.0b1"],
    "fa3": [None, "3.0.0b1", "3.0.0", "4.0.0b8", "junk"],
    "fa2": [None, "2.0.9", "2.1.1", "2.2.1", "2.7.2", "2.8.3.post1", "2.9.0", "2.8.3+cu12torch2.4"],
}
HEAD_DIMS = st.sampled_from([8, 16, 32, 36, 64, 96, 100, 112, 128, 136, 160, 192, 200, 256, 264, 512])


@st.composite
def specs(draw) -> AttentionSpec:
    heads_kv = draw(st.sampled_from([1, 2, 4, 8, 16]))
    mask = draw(st.sampled_from(list(MaskType)))
    window = (-1, -1) if mask is MaskType.ARBITRARY else draw(st.tuples(st.sampled_from([-1, 0, 7, 128]),
                                                                         st.sampled_from([-1, 0, 7, 128])))
    varlen = draw(st.booleans())
    return AttentionSpec(
        dtype=draw(st.sampled_from(list(Dtype))), head_dim_qk=draw(HEAD_DIMS),
        head_dim_v=draw(st.none() | HEAD_DIMS), num_heads_q=heads_kv * draw(st.sampled_from([1, 2, 8])),
        num_heads_kv=heads_kv, seqlen_q=draw(st.sampled_from([1, 128, 1024])),
        seqlen_kv=draw(st.none() | st.sampled_from([1, 128, 4096])),
        qkv_format=draw(st.sampled_from(list(QkvFormat))), varlen=varlen,
        same_seqlens=draw(st.none() | st.booleans()) if varlen else None, attn_mask_type=mask,
        window_size=window, dropout_p=draw(st.sampled_from([0.0, 0.1])),
        softcap=draw(st.sampled_from([0.0, 30.0])), alibi=draw(st.booleans()), bias=draw(st.booleans()),
        learnable_sink=draw(st.booleans()), deterministic=draw(st.booleans()), training=draw(st.booleans()),
        kv_cache=draw(st.booleans()), paged_kv=draw(st.booleans()), context_parallel=draw(st.booleans()),
        num_splits=draw(st.sampled_from([0, 1, 4])), device=draw(st.sampled_from(["cuda", "cuda:0", "cpu"])))


@st.composite
def environments(draw):
    cc = draw(st.none() | st.sampled_from(ALL_CCS))
    status = draw(st.sampled_from([ImportStatus.OK, ImportStatus.OK, ImportStatus.NOT_CHECKED, ImportStatus.CRASH]))
    return make_env(cc, **{name: draw(st.sampled_from(options)) for name, options in VERSIONS.items()},
                    import_status=status)


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(specs(), environments())
def test_chosen_is_the_first_backend_without_reasons(spec, env):
    decision = decide(spec, env)
    assert decision.chosen is not None and not decision.reasons_for(decision.chosen)
    rejected = decision.rejected
    order = [name for name, _ in decision.reasons]
    assert all(name in rejected for name in order[:order.index(decision.chosen)])


@SETTINGS
@given(specs(), environments())
def test_sdpa_is_never_rejected_for_a_valid_spec(spec, env):
    assert decide(spec, env).reasons_for(BackendName.SDPA) == ()


@SETTINGS
@given(specs(), environments())
def test_decisions_are_deterministic_and_serialisable(spec, env):
    first = decide(spec, env)
    cache_clear()
    again = decide(AttentionSpec.from_dict(json.loads(json.dumps(spec.to_dict()))), env)
    assert again == first and again is not first
    plain = json.loads(json.dumps(decision_to_plain(first)))
    assert plain["chosen"] == first.chosen.value


def test_reason_codes_are_prometheus_label_values():
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", code.value) for code in ReasonCode)


INVALID = st.sampled_from([
    ("head_dim_qk", 0), ("head_dim_qk", -8), ("head_dim_v", 0), ("num_heads_q", 0), ("num_heads_kv", 3),
    ("attn_mask_type", "causal_top_left"), ("dtype", "fp4"), ("qkv_format", "bhsd"), ("dropout_p", 1.0),
    ("dropout_p", -0.1), ("softcap", -1.0), ("seqlen_q", -1), ("num_splits", -1), ("window_size", (-2, 0)),
    ("window_size", (1, 2, 3)), ("alibi", "yes"), ("training", 1), ("device", ""),
])


@settings(max_examples=100, deadline=None)
@given(INVALID, environments())
def test_invalid_specs_raise_before_any_decision(bad, env):
    field, value = bad
    cache_clear()
    fields = {"num_heads_q": 16, "num_heads_kv": 4, field: value}
    with pytest.raises(SpecError) as raised:
        decide(AttentionSpec(**fields), env)
    assert raised.value.field == field
    assert decide.cache_info().currsize == 0


def test_window_with_an_arbitrary_mask_names_the_valid_masks():
    with pytest.raises(SpecError, match="window_size.*valid: no_mask, causal"):
        AttentionSpec(attn_mask_type="arbitrary", window_size=(128, 0))
