"""Features (dropout, ALiBi, bias, KV cache, CP, softcap, sink, window, deterministic, num_splits)."""

from __future__ import annotations

import pytest

from fa4doctor.dispatch.backends import BY_NAME
from fa4doctor.dispatch.backends.base import FEATURE_FLAGS
from fa4doctor.dispatch.reasons import BackendName, ReasonCode
from fa4doctor.dispatch.spec import AttentionSpec

from .dispatch_envs import codes, only, previous

R, B = ReasonCode, BackendName
# A spec that uses each feature and nothing else that one of the backends below refuses.
USES = {
    "dropout": dict(dropout_p=0.1), "alibi": dict(alibi=True), "bias": dict(bias=True),
    "kv_cache": dict(kv_cache=True, training=False), "paged_kv": dict(paged_kv=True, training=False),
    "context_parallel": dict(context_parallel=True), "softcap": dict(softcap=30.0),
    "learnable_sink": dict(learnable_sink=True), "window": dict(window_size=(128, 0)),
    "deterministic": dict(deterministic=True),
}
HOME = {B.FA4: (10, 0), B.FA3: (9, 0), B.FA2: (9, 0), B.SDPA: (9, 0)}  # where each runs everything it can
CODE = {feature: code for feature, _, code in FEATURE_FLAGS}


def test_every_feature_has_a_spec():
    assert set(USES) == set(CODE)


@pytest.mark.parametrize("backend", list(HOME))
@pytest.mark.parametrize("feature", sorted(USES))
def test_feature_support_from_data(backend, feature):
    found = codes(backend, AttentionSpec(head_dim_qk=64, **USES[feature]), only(backend, HOME[backend]))
    assert (CODE[feature] not in found) is (feature in BY_NAME[backend].FEATURES), found


GATED = [(b, f, v) for b in (B.FA4, B.FA3, B.FA2) for f, v in BY_NAME[b].FEATURES.items() if v]


@pytest.mark.parametrize("backend, feature, since", GATED)
def test_feature_version_gates(backend, feature, since):
    spec = AttentionSpec(head_dim_qk=64, **USES[feature])
    assert CODE[feature] in codes(backend, spec, only(backend, HOME[backend], previous(since)))
    assert CODE[feature] not in codes(backend, spec, only(backend, HOME[backend], since))


def test_fa2_gates_are_the_documented_releases():
    assert {f: v for f, v in BY_NAME[B.FA2].FEATURES.items() if v} == {
        "window": "2.3", "alibi": "2.4", "deterministic": "2.4.1", "kv_cache": "2.5", "paged_kv": "2.5",
        "softcap": "2.6"}


@pytest.mark.parametrize("version, training, ok", [
    ("4.0.0b8", True, False), ("4.0.0b9", True, True), ("4.0.0b8", False, True)])
def test_fa4_softcap_backward_needs_b9(version, training, ok):
    spec = AttentionSpec(softcap=30.0, training=training)
    assert (R.SOFTCAP_UNSUPPORTED not in codes(B.FA4, spec, only(B.FA4, (9, 0), version))) is ok


@pytest.mark.parametrize("cc, version, dims, training, ok", [
    ((9, 0), "4.0.0b26", 128, True, True), ((9, 0), "4.0.0b25", 128, True, False),
    ((9, 0), "4.0.0b25", 128, False, True), ((10, 0), "4.0.0b26", 128, True, True),
    ((10, 0), "4.0.0b36", 256, True, False), ((10, 0), "4.0.0b36", 256, False, True),  # iface@b36:2455
    ((8, 0), "4.0.0b36", 128, False, False), ((12, 0), "4.0.0b36", 128, False, False),
    ((11, 0), "4.0.0b36", 128, False, True),
])
def test_fa4_learnable_sink(cc, version, dims, training, ok):
    spec = AttentionSpec(learnable_sink=True, head_dim_qk=dims, training=training)
    assert (R.SINK_UNSUPPORTED not in codes(B.FA4, spec, only(B.FA4, cc, version))) is ok


@pytest.mark.parametrize("training, ok", [(True, False), (False, True)])
def test_fa4_hd256_sm100_softcap_backward(training, ok):
    spec = AttentionSpec(softcap=30.0, head_dim_qk=256, training=training)
    assert (R.SOFTCAP_UNSUPPORTED not in codes(B.FA4, spec, only(B.FA4, (10, 0)))) is ok


@pytest.mark.parametrize("cc, heads_kv, version, training, ok", [
    ((12, 0), 16, "4.0.0b36", True, False), ((12, 0), 16, "4.0.0b36", False, True),
    ((9, 0), 16, "4.0.0b5", True, True), ((10, 0), 4, "4.0.0b5", True, True),
    ((9, 0), 4, "4.0.0b11", True, False), ((9, 0), 4, "4.0.0b12", True, True),  # FA PR #2510
])
def test_fa4_deterministic_backward(cc, heads_kv, version, training, ok):
    spec = AttentionSpec(deterministic=True, num_heads_kv=heads_kv, training=training)
    assert (R.DETERMINISTIC_UNSUPPORTED not in codes(B.FA4, spec, only(B.FA4, cc, version))) is ok


@pytest.mark.parametrize("dims, training, ok", [(256, True, False), (192, True, True), (200, True, False),
                                                  (256, False, True)])
def test_fa3_deterministic_rounded_256(dims, training, ok):
    spec = AttentionSpec(deterministic=True, head_dim_qk=dims, training=training)
    assert (R.DETERMINISTIC_UNSUPPORTED not in codes(B.FA3, spec, only(B.FA3))) is ok


@pytest.mark.parametrize("backend, cc, splits, ok", [
    (B.FA4, (9, 0), 1, True), (B.FA4, (9, 0), 2, False), (B.FA4, (9, 0), 0, False),
    (B.FA4, (8, 0), 4, False), (B.FA4, (12, 0), 2, False), (B.FA4, (10, 0), 4, True), (B.FA4, (11, 0), 0, True),
    (B.FA3, (9, 0), 4, True), (B.FA2, (9, 0), 1, True), (B.FA2, (9, 0), 2, False), (B.SDPA, (9, 0), 8, True),
])
def test_num_splits(backend, cc, splits, ok):
    spec = AttentionSpec(num_splits=splits, training=False)
    assert (R.NUM_SPLITS_UNSUPPORTED not in codes(backend, spec, only(backend, cc))) is ok


@pytest.mark.parametrize("window, ok", [((-1, -1), True), ((128, 0), False), ((-1, 0), True)])
def test_fa4_hd256_sm100_window(window, ok):
    spec = AttentionSpec(head_dim_qk=256, window_size=window, attn_mask_type="causal_bottom_right")
    assert (R.WINDOW_UNSUPPORTED not in codes(B.FA4, spec, only(B.FA4, (10, 0)))) is ok


def test_fa2_softcap_with_dropout():
    env = only(B.FA2)
    assert R.SOFTCAP_UNSUPPORTED in codes(B.FA2, AttentionSpec(softcap=5.0, dropout_p=0.1), env)
    assert R.SOFTCAP_UNSUPPORTED not in codes(B.FA2, AttentionSpec(softcap=5.0), env)


@pytest.mark.parametrize("cc, ok", [((12, 0), False), ((9, 0), True)])
def test_fa2_kv_cache_not_on_sm120(cc, ok):
    spec = AttentionSpec(kv_cache=True, training=False)
    assert (R.KV_CACHE_UNSUPPORTED not in codes(B.FA2, spec, only(B.FA2, cc))) is ok


@pytest.mark.parametrize("mask, seqlen_kv, ok", [
    ("no_mask", 1024, True), ("causal", 1024, True), ("causal_bottom_right", 1024, False),
    ("causal", 2048, False),
])
@pytest.mark.parametrize("backend", [B.FA3, B.FA2])
def test_context_parallel_exclusions(backend, mask, seqlen_kv, ok):
    spec = AttentionSpec(context_parallel=True, attn_mask_type=mask, seqlen_kv=seqlen_kv)
    found = codes(backend, spec, only(backend))
    assert (R.CONTEXT_PARALLEL_UNSUPPORTED not in found) is ok


@pytest.mark.parametrize("backend", [B.FA4, B.FA3, B.FA2])
def test_arbitrary_mask_only_sdpa(backend):
    spec = AttentionSpec(attn_mask_type="arbitrary")
    assert R.MASK_UNSUPPORTED in codes(backend, spec, only(backend))
    assert codes(B.SDPA, spec, only(backend)) == set()
