"""One plan per plan class (runtime/plan_class.py), proven against fresh decisions over random lengths.

- The rules: two specs of one class get equal Decisions in every environment drawn, and the adapters
  would bind the same call (FA's mask translation, SDPA's flags).
- The runtime: the plan reused for a new length is the plan of the first length exactly when the
  class is the same, its Decision is a fresh `decide`'s, and its output equals a fresh decision's
  and bind's (caches reset; CPU tensors, SDPA), for fixed and variable-length batches.
- The tables: bounded, and a full one drops its least recently used entry, one at a time (issue 14).
"""

from __future__ import annotations

import pytest
import torch
from dispatch.dispatch_envs import ALL_CCS, make_env
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fa4doctor.dispatch.policy import Policy
from fa4doctor.dispatch.selection import cache_clear, decide
from fa4doctor.dispatch.semantics import fa_mask
from fa4doctor.dispatch.spec import AttentionSpec, Dtype, MaskType
from fa4doctor.names import BackendName
from fa4doctor.runtime import dispatcher as runtime, inputs, local_env
from fa4doctor.runtime.adapters.sdpa import fast_kwargs
from fa4doctor.runtime.plan_class import lengths, plan_class

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
MASKS = [m for m in MaskType if m is not MaskType.ARBITRARY]
SIDES = st.sampled_from([-1, 0, 1, 3, 7, 64])


@st.composite
def length_pair(draw, order: int, top: int = 300) -> tuple[int, int]:
    q = draw(st.integers(0, top))
    if order == 0:
        return q, q
    longer = q + draw(st.integers(1, top))
    return (longer, q) if order > 0 else (q, longer)


@st.composite
def one_class(draw) -> tuple[AttentionSpec, AttentionSpec]:
    """Two specs that differ only in their lengths, drawn so that they often share a class."""
    order = draw(st.sampled_from([-1, 0, 1]))
    (q1, kv1), (q2, kv2) = draw(length_pair(order)), draw(length_pair(order))
    heads_kv = draw(st.sampled_from([1, 2, 8]))
    varlen = draw(st.booleans())
    fields = dict(
        dtype=draw(st.sampled_from(list(Dtype))), head_dim_qk=draw(st.sampled_from([64, 128, 192, 256])),
        head_dim_v=draw(st.none() | st.sampled_from([128, 256])), num_heads_kv=heads_kv,
        num_heads_q=heads_kv * draw(st.sampled_from([1, 4])), attn_mask_type=draw(st.sampled_from(MASKS)),
        window_size=draw(st.tuples(SIDES, SIDES)), varlen=varlen,
        same_seqlens=draw(st.none() | st.booleans()) if varlen else None,
        softcap=draw(st.sampled_from([0.0, 30.0])), training=draw(st.booleans()),
        deterministic=draw(st.booleans()), context_parallel=draw(st.booleans()),
        device=draw(st.sampled_from(["cuda", "cpu"])))
    return (AttentionSpec(seqlen_q=q1, seqlen_kv=kv1, **fields), AttentionSpec(seqlen_q=q2, seqlen_kv=kv2, **fields))


ENVS = st.builds(lambda cc, fa4, fa3, fa2: make_env(cc, fa4=fa4, fa3=fa3, fa2=fa2),
                 st.none() | st.sampled_from(ALL_CCS), st.sampled_from([None, "4.0.0b20", "4.0.0b36"]),
                 st.sampled_from([None, "3.0.0b1"]), st.sampled_from([None, "2.2.1", "2.8.3"]))
POLICIES = st.sampled_from([Policy(), Policy(force=BackendName.FA4), Policy(disabled=frozenset({BackendName.FA4}))])


@SETTINGS
@given(one_class(), ENVS, POLICIES)
def test_one_class_gets_one_decision_and_one_bound_call(pair, env, policy):
    a, b = pair
    assume(lengths(a) == lengths(b) and a != b)  # equal specs (exact lengths included) prove nothing
    assert plan_class(a, 0.1, 0, policy) == plan_class(b, 0.1, 0, policy)
    assert decide.__wrapped__(a, env, policy) == decide.__wrapped__(b, env, policy)
    for negative_sides in (False, True):  # FA2/FA3's window reading, and FA4's from b30
        assert fa_mask(a, negative_sides) == fa_mask(b, negative_sides)
    assert fast_kwargs(a, 0.1) == fast_kwargs(b, 0.1)


def _fresh() -> None:
    runtime.reset()
    cache_clear()


@st.composite
def calls(draw):
    """Arguments of two attention() calls that differ only in their sequence lengths."""
    heads_kv, head_dim = draw(st.sampled_from([1, 2])), draw(st.sampled_from([8, 16]))
    heads = heads_kv * draw(st.sampled_from([1, 2]))
    window = draw(st.none() | st.tuples(SIDES, SIDES))
    if draw(st.booleans()):  # a fixed-length batch
        mask = draw(st.sampled_from(["no_mask", "causal", "causal_bottom_right"]))
        order = draw(st.sampled_from([-1, 0, 1]))
        shapes = [draw(length_pair(order, top=24)) for _ in range(2)]
        batch = draw(st.sampled_from([1, 2]))
        return [((batch, sq, heads, head_dim), (batch, sk, heads_kv, head_dim), None)
                for sq, sk in shapes], {"attn_mask_type": mask, "window_size": window}
    mask = draw(st.sampled_from(["no_mask", "padding", "padding_causal", "padding_causal_bottom_right"]))
    batches = []
    for _ in range(2):
        n = draw(st.integers(1, 3))
        lens = [draw(st.tuples(st.integers(1, 12), st.integers(1, 12))) for _ in range(n)]
        batches.append(((sum(q for q, _ in lens), heads, head_dim), (sum(k for _, k in lens), heads_kv, head_dim),
                        lens))
    return batches, {"attn_mask_type": mask, "window_size": window, "qkv_format": "thd"}


def _arguments(shape_q, shape_kv, lens, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*s, generator=g) for s in (shape_q, shape_kv, shape_kv))
    if lens is None:
        return (q, k, v), {}
    offsets = [torch.tensor([0, *torch.tensor(side).cumsum(0).tolist()], dtype=torch.int32)
               for side in zip(*lens)]
    return (q, k, v), {"cu_seqlens_q": offsets[0], "cu_seqlens_kv": offsets[1]}


def _plan_of_last_call() -> runtime.Plan:
    return next(reversed(runtime._plans.values()))


@SETTINGS
@given(calls())
def test_a_new_length_runs_the_plan_a_fresh_decision_makes(drawn):
    (first, second), keywords = drawn
    _fresh()
    args1, extra1 = _arguments(*first, seed=1)
    args2, extra2 = _arguments(*second, seed=2)
    runtime.attention(*args1, **keywords, **extra1)
    plan1 = _plan_of_last_call()
    out = runtime.attention(*args2, **keywords, **extra2)
    plan2 = _plan_of_last_call()
    spec1, spec2 = (inputs.prepare(*a, **keywords, **e).spec for a, e in ((args1, extra1), (args2, extra2)))
    assert (plan2 is plan1) == (plan_class(spec1, 0, None, Policy()) == plan_class(spec2, 0, None, Policy()))
    assert plan2.decision == decide.__wrapped__(spec2, local_env.environment(), Policy.from_env())
    _fresh()
    assert torch.equal(out, runtime.python_attention(*args2, **keywords, **extra2))  # decided and bound afresh
    assert _plan_of_last_call() is not plan2


# The Python path's tables: the compiled hit path (tests/runtime/test_native.py) serves a class's
# other lengths from one entry of its own, so these call the Python function by name.
def test_a_curriculum_of_lengths_decides_once_per_class():
    for n in range(2, 200):
        t = torch.randn(1, n, 2, 8)
        runtime.python_attention(t, t, t, attn_mask_type="causal")
    assert len(runtime._plans) == 198 and len(runtime._classes) == 1


def test_a_top_left_shift_is_its_own_class():
    """FA runs a top-left causal mask with seqlen_q != seqlen_kv as a window shifted by
    seqlen_kv - seqlen_q, bound into its call (dispatch/semantics.py fa_mask): no sharing there."""
    plans = set()
    for sq, sk in ((9, 6), (10, 7), (9, 5)):
        runtime.attention(torch.randn(1, sq, 2, 8), torch.randn(1, sk, 2, 8), torch.randn(1, sk, 2, 8),
                          attn_mask_type="causal")
        plans.add(id(_plan_of_last_call()))
    assert len(plans) == 3 and len(runtime._classes) == 3


def _keys() -> list:
    return list(runtime._plans)


def test_the_key_table_drops_its_least_recently_used_key_one_at_a_time(monkeypatch):
    monkeypatch.setattr(runtime, "_MAX_PLANS", 8)
    monkeypatch.setattr(runtime, "_RECENT_FROM", 6)  # three quarters, as the module sets it
    tensors = {n: torch.randn(1, n, 2, 8) for n in range(2, 30)}

    def call(n):
        runtime.python_attention(tensors[n], tensors[n], tensors[n], attn_mask_type="causal")

    for n in range(2, 10):
        call(n)
    assert len(runtime._plans) == 8
    call(2)  # used again: now the most recent, so 3 goes first
    before = _keys()
    for n in range(10, 30):
        call(n)
        after = _keys()
        assert len(after) == 8 and len(set(before) - set(after)) == 1  # one evicted, never all
        before = after
    assert [key[0][1] for key in _keys()] == list(range(22, 30))  # q's length, in use order
    assert len(runtime._classes) == 1


def test_the_class_table_is_bounded_the_same_way(monkeypatch):
    monkeypatch.setattr(runtime, "_MAX_CLASSES", 2)
    for n, scale in ((4, 0.1), (4, 0.2), (4, 0.3), (5, 0.1)):  # the last: a new key of an evicted class
        t = torch.randn(1, n, 2, 8)
        runtime.python_attention(t, t, t, softmax_scale=scale)
    assert [plan.scale for plan in runtime._classes.values()] == [0.3, 0.1]
    (first, *_, last) = runtime._plans.values()
    assert len(runtime._plans) == 4 and first is not last  # keys keep their plans; the class decided again
